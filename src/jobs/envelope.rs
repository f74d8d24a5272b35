//! Envelope jobs: one input run N times on one engine, and the spread of
//! the results; containment of the fused path inside the graph path's
//! envelope.

use crate::backend::cpu::{CpuBackend, Faults};
use crate::backend::{AttnPath, Backend};
use crate::engine::generate::GenerateOptions;
use crate::engine::Engine;
use crate::engine::LayerQkv;
use crate::error::Result;
use crate::ident::Numerics;
use crate::model::Model;
use crate::progress::Progress;
use crate::verify::case::{Case, Key, Op};
use crate::verify::containment::{GreedyRun, PathContainment};
use crate::verify::envelope::{containment, envelope, Containment, Envelope, UlpType};
use crate::verify::metrics::diff;

/// What an envelope is taken over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvelopeLevel {
    /// q, k, v of every layer from the same inputs (one teacher-forced pass).
    Op,
    /// Every row's logits of one teacher-forced pass.
    Logits,
    /// Greedy generations: each step's logits (the top 8 when the vocabulary
    /// is larger than 4096, to keep N runs of long generations in memory).
    Greedy { steps: usize },
}

/// The ULPs a backend's differences are counted in: bf16 for bf16
/// arithmetic, f32 (the recording type) for f64 truth.
pub fn ulp_type(n: Numerics) -> UlpType {
    match n {
        Numerics::Bf16 => UlpType::Bf16,
        Numerics::F64 => UlpType::F32,
    }
}

/// The case of a run of `op` on `e` by `path`: its model, numerics and,
/// where the backend has one, its reduction mode (a run's identity beside
/// its parameters).
pub fn run_case<B: Backend>(e: &Engine<B>, op: Op, path: AttnPath) -> Case {
    let info = e.backend.device_info();
    let case = Case::new(op, e.backend.kind())
        .preset(&e.model_name)
        .numerics(info.numerics)
        .path(path);
    match info.details.get("reduction_mode") {
        Some(m) => case.with(Key::Mode, m),
        None => case,
    }
}

/// The case of an envelope of `e` at `level` on `tokens` tokens.
pub fn envelope_case<B: Backend>(
    e: &Engine<B>,
    level: EnvelopeLevel,
    path: AttnPath,
    tokens: usize,
) -> Case {
    let op = match level {
        EnvelopeLevel::Op => Op::Qkv,
        EnvelopeLevel::Logits => Op::Logits,
        EnvelopeLevel::Greedy { .. } => Op::Greedy,
    };
    let case = run_case(e, op, path);
    match level {
        EnvelopeLevel::Greedy { steps } => case.with(Key::Steps, steps),
        _ => case.tokens(tokens),
    }
}

/// What one run of one path gives: its flattened result and, for greedy
/// runs, the tokens and per-step values.
fn one_run<B: Backend>(
    e: &Engine<B>,
    level: EnvelopeLevel,
    path: AttnPath,
    tokens: &[u32],
    inputs: &[LayerQkv],
) -> Result<(Vec<f64>, Option<GreedyRun>)> {
    Ok(match level {
        EnvelopeLevel::Op => (qkv_from_inputs(e, inputs, tokens.len(), path)?, None),
        EnvelopeLevel::Logits => (
            e.teacher_forced(tokens, path, &mut Default::default())?
                .concat(),
            None,
        ),
        EnvelopeLevel::Greedy { steps } => {
            let full = e.config.vocab_size <= 4096;
            let opts = GenerateOptions {
                max_tokens: steps,
                path,
                keep_logits: full,
                top_k: 8,
                ..Default::default()
            };
            let run = e.generate(tokens, &opts, &mut |_| {})?;
            let per_step: Vec<Vec<f64>> = run
                .steps
                .iter()
                .map(|s| match &s.logits {
                    Some(l) => l.iter().map(|&v| v as f64).collect(),
                    None => s.top.iter().map(|t| t.1 as f64).collect(),
                })
                .collect();
            (
                per_step.concat(),
                Some(GreedyRun {
                    tokens: run.tokens,
                    steps: per_step,
                }),
            )
        }
    })
}

/// Every layer's q, k, v on `path` from its recorded input (`tokens` rows
/// at positions 0..), flattened layer after layer.
fn qkv_from_inputs<B: Backend>(
    e: &Engine<B>,
    inputs: &[LayerQkv],
    tokens: usize,
    path: AttnPath,
) -> Result<Vec<f64>> {
    let positions: Vec<usize> = (0..tokens).collect();
    let mut r = Vec::new();
    for l in inputs {
        r.extend(
            e.attention_inputs_from_host(l.layer, &l.input, &positions, path)?
                .concat(),
        );
    }
    Ok(r)
}

/// Op level holds each layer's input fixed (recorded once), so the spread
/// is the op's own, not that of the layers before it.
fn fixed_inputs<B: Backend>(
    e: &Engine<B>,
    level: EnvelopeLevel,
    tokens: &[u32],
) -> Result<Vec<LayerQkv>> {
    match level {
        EnvelopeLevel::Op => e.record_attention_inputs(tokens, &[]),
        _ => Ok(Vec::new()),
    }
}

fn summarise<B: Backend>(
    e: &Engine<B>,
    level: EnvelopeLevel,
    path: AttnPath,
    tokens: &[u32],
    results: &[Vec<f64>],
    greedy: &[GreedyRun],
) -> Envelope {
    let case = envelope_case(e, level, path, tokens.len());
    // Greedy runs that diverged have logits in other contexts: still the same
    // length, so the spread is measured, and the divergence steps say why.
    let toks: Vec<Vec<u32>> = greedy.iter().map(|g| g.tokens.clone()).collect();
    let toks = matches!(level, EnvelopeLevel::Greedy { .. }).then_some(toks.as_slice());
    let ulp = ulp_type(e.backend.numerics());
    let mut env = envelope(case, results, toks, ulp);
    env.fingerprint = Some(e.fingerprint(path));
    env
}

/// `runs` runs of one input on one engine, and their spread.
pub fn envelope_of<B: Backend>(
    e: &Engine<B>,
    level: EnvelopeLevel,
    path: AttnPath,
    tokens: &[u32],
    runs: usize,
) -> Result<Envelope> {
    let mut p = Progress::new("runs", runs);
    let inputs = fixed_inputs(e, level, tokens)?;
    let mut results = Vec::with_capacity(runs);
    let mut greedy = Vec::new();
    for i in 0..runs {
        let (r, g) = one_run(e, level, path, tokens, &inputs)?;
        results.push(r);
        greedy.extend(g);
        p.set(i + 1);
    }
    Ok(summarise(e, level, path, tokens, &results, &greedy))
}

/// `runs` runs of each path on one engine, interleaved (graph run i, then
/// fused run i, so that a drift of the machine falls on both alike), and
/// whether the fused path lies inside the graph path's envelope. `truth`
/// (an f64 CPU engine of the same model) decides where the graph path is
/// deterministic, at op and logits level.
pub fn containment_of<B: Backend>(
    e: &Engine<B>,
    truth: Option<&Engine<CpuBackend>>,
    level: EnvelopeLevel,
    tokens: &[u32],
    runs: usize,
) -> Result<PathContainment> {
    if let Some(t) = truth {
        if t.model_hash != e.model_hash {
            return Err(crate::error::Error::invalid(
                "containment",
                format!(
                    "the engine holds model {}, the truth engine {}: refusing to compare",
                    e.model_hash, t.model_hash
                ),
            ));
        }
    }
    let mut p = Progress::new("runs", 2 * runs);
    let inputs = fixed_inputs(e, level, tokens)?;
    let mut results: [Vec<Vec<f64>>; 2] = [Vec::new(), Vec::new()];
    let mut greedy: [Vec<GreedyRun>; 2] = [Vec::new(), Vec::new()];
    for i in 0..runs {
        for (k, path) in [AttnPath::Graph, AttnPath::Fused].into_iter().enumerate() {
            let (r, g) = one_run(e, level, path, tokens, &inputs)?;
            results[k].push(r);
            greedy[k].extend(g);
            p.set(2 * i + k + 1);
        }
    }
    let graph_env = summarise(e, level, AttnPath::Graph, tokens, &results[0], &greedy[0]);
    let fused_env = summarise(e, level, AttnPath::Fused, tokens, &results[1], &greedy[1]);
    Ok(match level {
        EnvelopeLevel::Greedy { steps } => {
            PathContainment::of_greedy(graph_env, fused_env, &greedy[0], &greedy[1], steps)
        }
        EnvelopeLevel::Op | EnvelopeLevel::Logits => {
            let t = match truth {
                None => None,
                Some(t) => Some(match level {
                    EnvelopeLevel::Op => {
                        qkv_from_inputs(t, &inputs, tokens.len(), AttnPath::Graph)?
                    }
                    _ => t
                        .teacher_forced(tokens, AttnPath::Graph, &mut Default::default())?
                        .concat(),
                }),
            };
            PathContainment::of_values(graph_env, fused_env, &results[0], &results[1], t.as_deref())
        }
    })
}

/// Teacher-forced logits envelope on the CPU reference with `faults`
/// planted (negative controls): the same `tokens` `runs` times.
pub fn cpu_envelope(
    model: &Model,
    numerics: Numerics,
    path: AttnPath,
    faults: Faults,
    tokens: &[u32],
    runs: usize,
) -> Result<Envelope> {
    let e = super::load(model, CpuBackend::with_faults(numerics, faults))?;
    envelope_of(&e, EnvelopeLevel::Logits, path, tokens, runs)
}

/// The case of a containment row of `e`: teacher-forced logits.
pub fn containment_case<B: Backend>(e: &Engine<B>, tokens: usize) -> Case {
    Case::new(Op::Logits, e.backend.kind())
        .preset(&e.model_name)
        .numerics(e.backend.numerics())
        .tokens(tokens)
}

/// Whether `e`'s fused-vs-graph distance on teacher-forced logits lies
/// inside `graph_env`, the graph path's own envelope (with both paths'
/// errors against `truth` for the zero-envelope rule).
pub fn containment_on<B: Backend>(
    e: &Engine<B>,
    truth: &Engine<CpuBackend>,
    tokens: &[u32],
    graph_env: &Envelope,
) -> Result<Containment> {
    let run = |p| {
        e.teacher_forced(tokens, p, &mut Default::default())
            .map(|l| l.concat())
    };
    let (g, f) = (run(AttnPath::Graph)?, run(AttnPath::Fused)?);
    let t = truth
        .teacher_forced(tokens, AttnPath::Graph, &mut Default::default())?
        .concat();
    let errors = (diff(&f, &t).rms, diff(&g, &t).rms);
    Ok(containment(diff(&f, &g).rms, graph_env, Some(errors)))
}
