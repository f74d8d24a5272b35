//! Jobs over an engine already loaded on any backend, so that every backend
//! is measured by the same procedure: the CPU functions in `jobs` and each
//! accelerator's rows call these rather than repeating them.

use super::{GoldenCase, DEFAULT_PROMPT, GOLDEN_STEPS, GOLDEN_TOP_K};
use crate::backend::cpu::{CpuBackend, Numerics};
use crate::backend::{AttnPath, Backend};
use crate::engine::generate::GenerateOptions;
use crate::engine::record::Fingerprint;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::verify::envelope::UlpType;
use crate::verify::golden::GoldenBody;
use crate::verify::parity::{op_parity, ParityReport};
use crate::verify::rows::RowVerdict;
use crate::verify::summary::{CheckResult, Status};

/// The preset of a synthetic model, else its origin: the `preset=` of case ids.
pub fn model_name(model: &Model) -> String {
    model
        .synth()
        .map_or(model.origin.clone(), |s| s.preset.clone())
}

/// Fused vs graph q, k, v on `e` from the same normalised inputs, judged by
/// `tolerance`, with f64 truth computed by the CPU reference on exactly the
/// inputs `e` saw (so truth does not inherit `e`'s earlier layers' error).
pub fn op_parity_on<B: Backend>(
    e: &Engine<B>,
    model: &Model,
    case: &str,
    tokens: &[u32],
    tolerance: &str,
) -> Result<ParityReport> {
    let truth = Engine::load(model, CpuBackend::new(Numerics::F64))?;
    if truth.model_hash != e.model_hash {
        return Err(Error::invalid(
            case,
            format!(
                "engine holds model {}, truth {}: refusing to compare",
                e.model_hash, truth.model_hash
            ),
        ));
    }
    let rec = e.record_attention_inputs(tokens, &[AttnPath::Graph, AttnPath::Fused])?;
    let positions: Vec<usize> = (0..tokens.len()).collect();
    let truth_ops = rec
        .iter()
        .map(|l| truth.attention_inputs_from_host(l.layer, &l.input, &positions, AttnPath::Graph))
        .collect::<Result<Vec<_>>>()?;
    let mut op = op_parity(case, &rec, Some(&truth_ops), tolerance);
    op.fingerprints = vec![
        e.fingerprint(AttnPath::Graph),
        e.fingerprint(AttnPath::Fused),
        truth.fingerprint(AttnPath::Graph),
    ];
    Ok(op)
}

/// A fresh greedy run of a golden case on `e`, as a golden body, with its
/// fingerprint.
pub fn golden_run_on<B: Backend>(
    e: &Engine<B>,
    case: &GoldenCase,
) -> Result<(GoldenBody, Fingerprint)> {
    let opts = GenerateOptions {
        max_tokens: GOLDEN_STEPS,
        path: case.path,
        ..Default::default()
    };
    let run = e.generate(&DEFAULT_PROMPT, &opts, &mut |_| {})?;
    Ok((
        GoldenBody::from_run(case.preset, 0, &run, GOLDEN_TOP_K),
        run.fingerprint,
    ))
}

/// Goldens of an accelerator (MLX, CUDA): each default preset on both paths,
/// bf16 only (neither computes in f64).
pub fn accelerator_golden_cases() -> Vec<GoldenCase> {
    let mut v = Vec::new();
    for preset in super::DEFAULT_PRESETS {
        for path in [AttnPath::Graph, AttnPath::Fused] {
            v.push(GoldenCase {
                preset,
                numerics: Numerics::Bf16,
                path,
            });
        }
    }
    v
}

/// The CPU reference's bf16 logits, teacher-forced on `tokens`, for a
/// backend holding model `hash` (refused if the CPU loads other weights).
pub fn cpu_reference_logits(
    model: &Model,
    hash: &str,
    tokens: &[u32],
    what: &str,
) -> Result<Vec<Vec<f64>>> {
    let cpu = Engine::load(model, CpuBackend::new(Numerics::Bf16))?;
    if cpu.model_hash != hash {
        return Err(Error::invalid(
            what,
            format!(
                "the backend holds model {hash}, the CPU reference {}: refusing to compare",
                cpu.model_hash
            ),
        ));
    }
    cpu.teacher_forced(tokens, AttnPath::Graph, &mut Default::default())
}

/// How an accelerator's logits compared with the CPU reference, row by row.
pub struct LogitsVsCpu {
    /// The tolerance the rows were judged by (a registry name).
    pub tolerance: &'static str,
    pub verdict: RowVerdict,
    pub rows: usize,
}

/// The rows every accelerator adds to `verify`, by one procedure: its
/// logits against the CPU reference (judged by the caller, which alone
/// knows its routing record), fused vs graph at op level against the
/// contract, a logits envelope of `envelope_runs` runs per path, and its
/// goldens of the preset.
#[allow(clippy::too_many_arguments)]
pub fn accelerator_rows<B: Backend>(
    backend: &str,
    e: &Engine<B>,
    model: &Model,
    seq: &[u32],
    logits: LogitsVsCpu,
    envelope_runs: usize,
    golden_root: &std::path::Path,
    push: &mut dyn FnMut(CheckResult),
) -> Result<()> {
    let preset = model_name(model);
    let vars = format!("preset={preset},numerics=bf16");
    let n = seq.len();
    let LogitsVsCpu {
        tolerance,
        verdict,
        rows,
    } = logits;
    push(CheckResult {
        check: "parity-logits".into(),
        case: format!("logits({vars},path=graph,tokens={n})@{backend}-vs-cpu"),
        metric: "max row rel RMS judged".into(),
        value: Some(verdict.worst_judged()),
        threshold: format!(
            "{tolerance} = {:e} per row; MoE: up to a routing near-tie",
            crate::verify::tolerances::tol(tolerance)
        ),
        status: if verdict.passes() {
            Status::Pass
        } else {
            Status::Fail
        },
        detail: match verdict {
            RowVerdict::AllWithin { .. } => format!("all {rows} rows within"),
            RowVerdict::RoutingNearTie {
                row,
                value,
                gap,
                layer,
                ..
            } => format!(
                "rows 0..{row} within; row {row} ({value:.3e}) follows a routing near-tie \
                 (gap {gap:.2e}, MoE layer {layer}); later rows not judged"
            ),
            RowVerdict::Outside {
                row,
                value,
                nearest_tie,
            } => format!(
                "row {row} at {value:.3e}, no routing near-tie explains it (nearest {nearest_tie:?})"
            ),
        },
    });
    let op = op_parity_on(
        e,
        model,
        &format!("qkv({vars},tokens={n})@{backend}"),
        seq,
        "fused_vs_graph_rms",
    )?;
    push(super::parity_rows(&op, "parity-op"));
    for path in [AttnPath::Graph, AttnPath::Fused] {
        let env = super::envelope_of(
            e,
            model,
            super::EnvelopeLevel::Logits,
            path,
            seq,
            envelope_runs,
            UlpType::Bf16,
        )?;
        push(super::envelope_row(&env));
    }
    for case in accelerator_golden_cases()
        .iter()
        .filter(|c| c.preset == preset)
    {
        let (now, _) = golden_run_on(e, case)?;
        push(super::golden_row(&now, golden_root, backend));
    }
    Ok(())
}
