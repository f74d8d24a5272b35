//! Fused-vs-graph parity jobs on any backend: op level (q, k, v from the
//! same inputs, against the contract) and layer / logits level
//! (teacher-forced, truth-relative, or strict in f64), each with f64 truth
//! from the CPU reference on exactly the inputs the backend saw.

use crate::backend::cpu::{CpuBackend, Faults};
use crate::backend::{AttnPath, Backend};
use crate::engine::{Capture, Engine, LayerQkv};
use crate::error::{Error, Result};
use crate::ident::Numerics;
use crate::model::Model;
use crate::verify::case::{Case, Key, Op};
use crate::verify::parity::{op_parity, run_parity, ParityReport};
use crate::verify::tolerances::Tol;

fn same_model<B: Backend>(e: &Engine<B>, truth: &Engine<CpuBackend>, case: &Case) -> Result<()> {
    if truth.model_hash != e.model_hash {
        return Err(Error::invalid(
            case.id(),
            format!(
                "engine holds model {}, truth {}: refusing to compare",
                e.model_hash, truth.model_hash
            ),
        ));
    }
    Ok(())
}

/// The fingerprints a parity report carries: `e`'s graph and fused runs,
/// then truth's.
fn fingerprints<B: Backend>(
    e: &Engine<B>,
    truth: &Engine<CpuBackend>,
) -> Vec<crate::engine::record::Fingerprint> {
    vec![
        e.fingerprint(AttnPath::Graph),
        e.fingerprint(AttnPath::Fused),
        truth.fingerprint(AttnPath::Graph),
    ]
}

/// The op contract for a backend's arithmetic: the published RMS bound in
/// bf16, the formula check in f64.
pub fn op_tolerance(numerics: Numerics) -> Tol {
    match numerics {
        Numerics::Bf16 => Tol::FusedVsGraphRms,
        Numerics::F64 => Tol::FusedVsGraphF64Rms,
    }
}

/// The case of an op-level parity row of `e` on `tokens` tokens.
pub fn op_case<B: Backend>(e: &Engine<B>, tokens: usize) -> Case {
    Case::new(Op::Qkv, e.backend.kind())
        .preset(&e.model_name)
        .numerics(e.backend.numerics())
        .tokens(tokens)
}

/// The case of a layer-level parity row of `e` on `tokens` tokens.
pub fn layers_case<B: Backend>(e: &Engine<B>, tokens: usize) -> Case {
    let mut case = op_case(e, tokens);
    case.op = Op::Layers;
    case
}

/// Fused vs graph q, k, v on `e` from the same normalised inputs, judged by
/// `tolerance`, with truth computed by `truth` on exactly the inputs `e`
/// saw (so truth does not inherit `e`'s earlier layers' error).
pub fn op_parity_on<B: Backend>(
    e: &Engine<B>,
    truth: &Engine<CpuBackend>,
    tokens: &[u32],
    tolerance: Tol,
) -> Result<ParityReport> {
    let case = op_case(e, tokens.len());
    same_model(e, truth, &case)?;
    let rec = e.record_attention_inputs(tokens, &[AttnPath::Graph, AttnPath::Fused])?;
    let positions: Vec<usize> = (0..tokens.len()).collect();
    let truth_ops = rec
        .iter()
        .map(|l| truth.attention_inputs_from_host(l.layer, &l.input, &positions, AttnPath::Graph))
        .collect::<Result<Vec<_>>>()?;
    let mut op = op_parity(case, &rec, Some(&truth_ops), tolerance);
    op.fingerprints = fingerprints(e, truth);
    Ok(op)
}

/// Positions of the single-row (decode-step) op parity rows: the start, a
/// mid-range one, one past 4k (long-context kernel choices, RoPE angles of
/// thousands of radians) and one far out.
pub const DECODE_POSITIONS: [usize; 4] = [0, 1023, 4097, 32767];

/// The case of a single-row op parity row of `e` at `position`.
pub fn decode_op_case<B: Backend>(e: &Engine<B>, position: usize) -> Case {
    op_case(e, 1).with(Key::Position, position)
}

/// Fused vs graph q, k, v of one row at `position` (the shape a decode step
/// runs, through the single-row kernels), from each layer's input at the
/// last of `tokens`, with truth on exactly that input.
pub fn decode_op_parity_on<B: Backend>(
    e: &Engine<B>,
    truth: &Engine<CpuBackend>,
    tokens: &[u32],
    position: usize,
    tolerance: Tol,
) -> Result<ParityReport> {
    let case = decode_op_case(e, position);
    same_model(e, truth, &case)?;
    if position >= e.config.max_position_embeddings {
        return Err(Error::invalid(
            case.id(),
            format!(
                "position {position} is past the model's max_position_embeddings {}",
                e.config.max_position_embeddings
            ),
        ));
    }
    let hidden = e.config.hidden_size;
    let mut rows = Vec::new();
    let mut truth_ops = Vec::new();
    for l in e.record_attention_inputs(tokens, &[])? {
        let row = l.input[l.input.len().saturating_sub(hidden)..].to_vec();
        let mut by_path = Vec::new();
        for p in [AttnPath::Graph, AttnPath::Fused] {
            by_path.push((
                p,
                e.attention_inputs_from_host(l.layer, &row, &[position], p)?,
            ));
        }
        truth_ops.push(truth.attention_inputs_from_host(
            l.layer,
            &row,
            &[position],
            AttnPath::Graph,
        )?);
        rows.push(LayerQkv {
            layer: l.layer,
            input: row,
            by_path,
        });
    }
    let mut op = op_parity(case, &rows, Some(&truth_ops), tolerance);
    op.fingerprints = fingerprints(e, truth);
    Ok(op)
}

/// Each layer's output and the logits (last), teacher-forced on `tokens`.
pub fn layers_and_logits<B: Backend>(
    e: &Engine<B>,
    tokens: &[u32],
    path: AttnPath,
) -> Result<Vec<Vec<f64>>> {
    let mut c = Capture {
        layers: Some(Vec::new()),
        qkv: None,
    };
    let logits = e.teacher_forced(tokens, path, &mut c)?;
    let mut all = c.layers.expect("requested");
    all.push(logits.concat());
    Ok(all)
}

/// Fused vs graph at every layer and the logits, teacher-forced on
/// `tokens`: truth-relative, or the absolute `strict` bound.
pub fn layer_parity_on<B: Backend>(
    e: &Engine<B>,
    truth: &Engine<CpuBackend>,
    tokens: &[u32],
    strict: Option<Tol>,
) -> Result<ParityReport> {
    let case = layers_case(e, tokens.len());
    same_model(e, truth, &case)?;
    let g = layers_and_logits(e, tokens, AttnPath::Graph)?;
    let f = layers_and_logits(e, tokens, AttnPath::Fused)?;
    let t = layers_and_logits(truth, tokens, AttnPath::Graph)?;
    let mut run = run_parity(case, &f, &g, Some(&t), strict);
    run.fingerprints = fingerprints(e, truth);
    Ok(run)
}

/// Both parity levels on the CPU reference in `numerics` (op: the contract;
/// layers: truth-relative in bf16, strict in f64).
pub fn cpu_parity_on(
    e: &Engine<CpuBackend>,
    truth: &Engine<CpuBackend>,
    tokens: &[u32],
) -> Result<(ParityReport, ParityReport)> {
    parity_on(e, truth, tokens)
}

/// Both levels on any engine `e` against `truth`: the op contract in its
/// arithmetic, the layer level truth-relative (or the strict f64 bound).
pub fn parity_on<B: Backend>(
    e: &Engine<B>,
    truth: &Engine<CpuBackend>,
    tokens: &[u32],
) -> Result<(ParityReport, ParityReport)> {
    let numerics = e.backend.numerics();
    let op = op_parity_on(e, truth, tokens, op_tolerance(numerics))?;
    let strict = (numerics == Numerics::F64).then_some(Tol::FusedVsGraphF64Rms);
    Ok((op, layer_parity_on(e, truth, tokens, strict)?))
}

/// `lockstep parity` on `target`: `prompt` followed by greedy tokens of the
/// CPU reference's bf16 graph path up to `tokens` in all (the same sequence
/// whatever runs it), truth the CPU reference in f64.
pub fn parity_of(
    model: &Model,
    target: super::fixture::Target,
    prompt: &[u32],
    tokens: usize,
) -> Result<(ParityReport, ParityReport)> {
    use super::fixture::{run_on, EngineJob, Target};
    struct Job<'a> {
        truth: &'a Engine<CpuBackend>,
        seq: &'a [u32],
    }
    impl EngineJob for Job<'_> {
        type Output = (ParityReport, ParityReport);
        fn run<B: Backend>(self, e: &Engine<B>) -> Result<Self::Output> {
            parity_on(e, self.truth, self.seq)
        }
    }
    let bf16 = super::load_cpu(model, Numerics::Bf16)?;
    let truth = super::load_cpu(model, Numerics::F64)?;
    let seq = super::continuation(&bf16, prompt, tokens.saturating_sub(prompt.len()))?;
    match target {
        Target::Cpu(Numerics::Bf16) => parity_on(&bf16, &truth, &seq),
        Target::Cpu(Numerics::F64) => parity_on(&truth, &truth, &seq),
        other => {
            drop(bf16);
            run_on(
                model,
                other,
                Job {
                    truth: &truth,
                    seq: &seq,
                },
            )
        }
    }
}

/// `cpu_parity_on` for a model loaded here, with `faults` planted in the
/// candidate engine (negative controls); truth is a separate, fault-free
/// f64 engine.
pub fn cpu_parity(
    model: &Model,
    numerics: Numerics,
    faults: Faults,
    tokens: &[u32],
) -> Result<(ParityReport, ParityReport)> {
    let engine = super::load(model, CpuBackend::with_faults(numerics, faults))?;
    let truth = super::load_cpu(model, Numerics::F64)?;
    cpu_parity_on(&engine, &truth, tokens)
}
