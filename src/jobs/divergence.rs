//! Divergence investigations on the CPU reference: two configurations
//! generate greedily from one prompt; where their tokens first part, the
//! step is classified (near-tie or regression) and bisected layer by layer
//! on the common prefix.

use crate::backend::cpu::{CpuBackend, Faults};
use crate::backend::AttnPath;
use crate::backend::Backend;
use crate::engine::generate::GenerateOptions;
use crate::engine::{Capture, Engine};
use crate::error::Result;
use crate::ident::Numerics;
use crate::model::Model;
use crate::verify::divergence::{
    bisect, bisect_with_truth, first_divergence, near_tie_threshold, Bisection, Divergence,
    LayerCapture,
};
use crate::verify::tolerances::Tol;

/// One side of a comparison: a numerics mode, a path and planted faults.
#[derive(Debug, Clone)]
pub struct Side {
    pub numerics: Numerics,
    pub path: AttnPath,
    pub faults: Faults,
}

/// Everything a divergence investigation found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DivergenceReport {
    pub tokens_a: Vec<u32>,
    pub tokens_b: Vec<u32>,
    pub divergence: Option<Divergence>,
    pub bisection: Option<Bisection>,
}

/// Each layer's output and attention inputs at the last row of `tokens`,
/// teacher-forced.
pub(crate) fn last_row_captures<B: Backend>(
    e: &Engine<B>,
    tokens: &[u32],
    path: AttnPath,
) -> Result<Vec<LayerCapture>> {
    let mut c = Capture::all();
    e.teacher_forced(tokens, path, &mut c)?;
    let last = |v: &Vec<f64>| {
        let w = v.len() / tokens.len();
        v[v.len() - w..].to_vec()
    };
    let qkv = c.qkv.expect("requested");
    Ok(c.layers
        .expect("requested")
        .iter()
        .zip(qkv)
        .map(|(out, [q, k, v])| LayerCapture {
            qkv: Some([last(&q), last(&k), last(&v)]),
            out: last(out),
        })
        .collect())
}

/// Where two runs over `tokens` part, layer by layer at the last row (the
/// row a failing check pointed at: pass the tokens up to it), and which of
/// them is nearer f64 truth there: the bisection `verify` prints when a
/// logits or containment row fails. `a` and `b` may be different backends.
pub fn bisect_pair<A: Backend, B: Backend>(
    a: (&Engine<A>, AttnPath),
    b: (&Engine<B>, AttnPath),
    truth: &Engine<CpuBackend>,
    tokens: &[u32],
) -> Result<Bisection> {
    let step = tokens.len().saturating_sub(1);
    Ok(bisect_with_truth(
        step,
        &last_row_captures(a.0, tokens, a.1)?,
        &last_row_captures(b.0, tokens, b.1)?,
        Some(&last_row_captures(truth, tokens, AttnPath::Graph)?),
    ))
}

/// Generates greedily with both sides, finds the first divergent token,
/// classifies it (near-tie threshold from `near_tie_margin_bf16` / `_f32`),
/// and bisects it layer by layer on the common prefix.
pub fn investigate_divergence(
    model: &Model,
    a: &Side,
    b: &Side,
    prompt: &[u32],
    steps: usize,
) -> Result<DivergenceReport> {
    let ea = super::load(model, CpuBackend::with_faults(a.numerics, a.faults.clone()))?;
    let eb = super::load(model, CpuBackend::with_faults(b.numerics, b.faults.clone()))?;
    let gen = |e: &Engine<CpuBackend>, p: AttnPath| {
        let opts = GenerateOptions {
            max_tokens: steps,
            path: p,
            ..Default::default()
        };
        e.generate(prompt, &opts, &mut |_| {})
    };
    let (ra, rb) = (gen(&ea, a.path)?, gen(&eb, b.path)?);
    let tie = if a.numerics == Numerics::Bf16 || b.numerics == Numerics::Bf16 {
        Tol::NearTieMarginBf16
    } else {
        Tol::NearTieMarginF32
    };
    let mut div = first_divergence(&ra, &rb, near_tie_threshold(tie, None));
    let bis = match div.as_mut() {
        None => None,
        Some(d) => {
            let prefix: Vec<u32> = prompt.iter().chain(&ra.tokens[..d.step]).copied().collect();
            let b = bisect(
                d.step,
                &last_row_captures(&ea, &prefix, a.path)?,
                &last_row_captures(&eb, &prefix, b.path)?,
            );
            d.refine(&b);
            Some(b)
        }
    };
    Ok(DivergenceReport {
        tokens_a: ra.tokens,
        tokens_b: rb.tokens,
        divergence: div,
        bisection: bis,
    })
}
