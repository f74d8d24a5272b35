//! Decode steps against the teacher-forced pass: a greedy run's per-step
//! logits (each step a single-token forward, recorded or replayed where the
//! backend records steps) beside one teacher-forced pass over the same
//! tokens, judged by the backend's `DecodeRule`.

use crate::backend::{AttnPath, Backend};
use crate::engine::generate::GenerateOptions;
use crate::engine::Engine;
use crate::error::Result;
use crate::verify::case::{Case, Key, Op};
use crate::verify::decode::{judge_decode, DecodeReport, DecodeRule};

/// The case of a decode row of `e` on `path` over `steps` steps.
pub fn decode_case<B: Backend>(e: &Engine<B>, path: AttnPath, steps: usize) -> Case {
    Case::new(Op::Decode, e.backend.kind())
        .preset(&e.model_name)
        .numerics(e.backend.numerics())
        .path(path)
        .with(Key::Steps, steps)
}

/// Greedy decoding of `steps` tokens after `prompt` on `path`, its steps'
/// logits against the rows of a teacher-forced pass over prompt and tokens.
pub fn decode_vs_teacher_forced<B: Backend>(
    e: &Engine<B>,
    prompt: &[u32],
    steps: usize,
    path: AttnPath,
    rule: DecodeRule,
) -> Result<DecodeReport> {
    let opts = GenerateOptions {
        max_tokens: steps,
        path,
        keep_logits: true,
        ..Default::default()
    };
    let run = e.generate(prompt, &opts, &mut |_| {})?;
    let decode: Vec<Vec<f64>> = run
        .steps
        .iter()
        .map(|s| {
            s.logits
                .as_ref()
                .map(|l| l.iter().map(|&v| f64::from(v)).collect())
                .unwrap_or_default()
        })
        .collect();
    let mut seq = prompt.to_vec();
    seq.extend(&run.tokens[..run.tokens.len().saturating_sub(1)]);
    let rows = e.teacher_forced(&seq, path, &mut Default::default())?;
    // Row p predicts position p + 1: step i is row prompt.len() - 1 + i.
    let teacher = rows[prompt.len() - 1..].to_vec();
    Ok(judge_decode(
        decode_case(e, path, steps),
        rule,
        &decode,
        &teacher,
    ))
}
