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
use crate::verify::golden::GoldenBody;
use crate::verify::parity::{op_parity, ParityReport};

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
