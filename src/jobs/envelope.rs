//! Envelope jobs: one input run N times on one engine, and the spread of
//! the results; containment of the fused path inside the graph path's
//! envelope.

use crate::backend::cpu::{CpuBackend, Faults};
use crate::backend::{AttnPath, Backend};
use crate::engine::generate::GenerateOptions;
use crate::engine::Engine;
use crate::error::Result;
use crate::ident::Numerics;
use crate::model::Model;
use crate::progress::Progress;
use crate::verify::case::{Case, Key, Op};
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

/// The case of an envelope of `e` at `level` on `tokens` tokens.
pub fn envelope_case<B: Backend>(
    e: &Engine<B>,
    level: EnvelopeLevel,
    path: AttnPath,
    tokens: usize,
) -> Case {
    let info = e.backend.device_info();
    let op = match level {
        EnvelopeLevel::Op => Op::Qkv,
        EnvelopeLevel::Logits => Op::Logits,
        EnvelopeLevel::Greedy { .. } => Op::Greedy,
    };
    let case = Case::new(op, e.backend.kind())
        .preset(&e.model_name)
        .numerics(info.numerics)
        .path(path);
    let case = match info.details.get("reduction_mode") {
        Some(m) => case.with(Key::Mode, m),
        None => case,
    };
    match level {
        EnvelopeLevel::Greedy { steps } => case.with(Key::Steps, steps),
        _ => case.tokens(tokens),
    }
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
    let mut results = Vec::with_capacity(runs);
    let mut greedy_tokens = Vec::with_capacity(runs);
    // Op level holds each layer's input fixed (recorded once), so the spread
    // is the op's own, not that of the layers before it.
    let inputs = match level {
        EnvelopeLevel::Op => e.record_attention_inputs(tokens, &[])?,
        _ => Vec::new(),
    };
    let positions: Vec<usize> = (0..tokens.len()).collect();
    for i in 0..runs {
        let r: Vec<f64> = match level {
            EnvelopeLevel::Op => {
                let mut r = Vec::new();
                for l in &inputs {
                    let qkv = e.attention_inputs_from_host(l.layer, &l.input, &positions, path)?;
                    r.extend(qkv.concat());
                }
                r
            }
            EnvelopeLevel::Logits => e
                .teacher_forced(tokens, path, &mut Default::default())?
                .concat(),
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
                greedy_tokens.push(run.tokens);
                run.steps
                    .iter()
                    .flat_map(|s| match &s.logits {
                        Some(l) => l.iter().map(|&v| v as f64).collect::<Vec<_>>(),
                        None => s.top.iter().map(|t| t.1 as f64).collect(),
                    })
                    .collect()
            }
        };
        results.push(r);
        p.set(i + 1);
    }
    let case = envelope_case(e, level, path, tokens.len());
    // Greedy runs that diverged have logits in other contexts: still the same
    // length, so the spread is measured, and the divergence steps say why.
    let toks = matches!(level, EnvelopeLevel::Greedy { .. }).then_some(greedy_tokens.as_slice());
    let ulp = ulp_type(e.backend.numerics());
    let mut env = envelope(case, &results, toks, ulp);
    env.fingerprint = Some(e.fingerprint(path));
    Ok(env)
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
