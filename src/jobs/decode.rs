//! Decode steps against the teacher-forced pass: a greedy run's per-step
//! logits (each step a single-token forward, recorded or replayed where the
//! backend records steps) beside one teacher-forced pass over the same
//! tokens, judged by the backend's `DecodeRule`.

use crate::backend::{AttnPath, Backend, RowRouting};
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
    e.backend.record_routing(true);
    let run = e.generate(prompt, &opts, &mut |_| {});
    let decode_log = e.backend.take_routing_log();
    e.backend.record_routing(false);
    let run = run?;
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
    e.backend.record_routing(true);
    let rows = e.teacher_forced(&seq, path, &mut Default::default());
    let teacher_log = e.backend.take_routing_log();
    e.backend.record_routing(false);
    let rows = rows?;
    // Row p predicts position p + 1: step i is row prompt.len() - 1 + i.
    let teacher = rows[prompt.len() - 1..].to_vec();
    let moe_layers = (0..e.config.num_hidden_layers)
        .filter(|&l| e.config.layer_is_moe(l))
        .count();
    let ties = step_ties(
        &decode_log,
        &teacher_log,
        moe_layers,
        prompt.len(),
        decode.len(),
    );
    Ok(judge_decode(
        decode_case(e, path, steps),
        rule,
        &decode,
        &teacher,
        &ties,
    ))
}

/// Each step's routing decision nearest a tie, over every MoE layer of the
/// decode run (forward i: the prefill for step 0, whose last row is the
/// step's, then one row per step) and of the teacher-forced pass (row
/// prompt - 1 + i). Empty when either record is not laid out that way (a
/// dense model; a backend that replays recorded steps without routing on
/// the host): the steps are then judged without the excuse.
fn step_ties(
    decode_log: &[Vec<RowRouting>],
    teacher_log: &[Vec<RowRouting>],
    moe_layers: usize,
    prompt: usize,
    steps: usize,
) -> Vec<Option<(f32, usize)>> {
    if moe_layers == 0
        || decode_log.len() != moe_layers * steps
        || teacher_log.len() != moe_layers
        || teacher_log.iter().any(|c| c.len() != prompt + steps - 1)
    {
        return Vec::new();
    }
    (0..steps)
        .map(|i| {
            let row = if i == 0 { prompt - 1 } else { 0 };
            (0..moe_layers)
                .flat_map(|l| {
                    let d = decode_log[i * moe_layers + l]
                        .get(row)
                        .map(|r| (r.boundary_gap, l));
                    let t = teacher_log[l]
                        .get(prompt - 1 + i)
                        .map(|r| (r.boundary_gap, l));
                    [d, t]
                })
                .flatten()
                .min_by(|a, b| a.0.total_cmp(&b.0))
        })
        .collect()
}
