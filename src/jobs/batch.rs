//! Batch invariance: each sequence decoded alone (a batch of one) against
//! the same sequence decoded in a batch with others, of other lengths,
//! joining at other steps, at other slots. The batched run is fed the
//! alone run's tokens, so a difference in one step's logits never changes
//! later inputs: every step is compared on the same input.

use crate::backend::{AttnPath, Backend};
use crate::engine::Engine;
use crate::error::{Error, Result};
use serde::Serialize;

/// Sequences in `verify`'s batch rows: past one GEMV pass of eight rows.
pub const VERIFY_BATCH: usize = 12;

/// Decode steps per sequence in `verify`'s batch rows.
pub const VERIFY_STEPS: usize = 6;

/// The plan of `verify`'s batch rows: `VERIFY_BATCH` sequences of 3, 5,
/// ... prompt tokens, in a shuffled slot order, joining over the first
/// three steps, `VERIFY_STEPS` steps each.
pub fn verify_plan(vocab: usize) -> BatchPlan {
    let n = VERIFY_BATCH;
    // Ids 1..=400 (the shared tests' plans), fewer in a smaller vocabulary.
    let ids = 400.min(vocab.saturating_sub(1)).max(1);
    BatchPlan {
        prompts: (0..n)
            .map(|i| {
                (0..3 + 2 * i)
                    .map(|t| (1 + (t * 37 + i * 11) % ids) as u32)
                    .collect()
            })
            .collect(),
        joins: (0..n).map(|i| i % 3).collect(),
        steps: VERIFY_STEPS,
        order: (0..n).map(|i| (i * 7) % n).collect(),
    }
}

/// The case of a batch row of `e` on `path`.
pub fn batch_case<B: Backend>(e: &Engine<B>, path: AttnPath) -> crate::verify::case::Case {
    use crate::verify::case::{Key, Op};
    super::envelope::run_case(e, Op::Batch, path)
        .with(Key::Batch, VERIFY_BATCH)
        .with(Key::Steps, VERIFY_STEPS)
}

/// Sequences to decode together.
#[derive(Debug, Clone)]
pub struct BatchPlan {
    pub prompts: Vec<Vec<u32>>,
    /// The batched step at which each sequence joins (is prefilled and then
    /// steps with the others).
    pub joins: Vec<usize>,
    /// Decode steps per sequence; it leaves after them.
    pub steps: usize,
    /// Slot order: the batch lists active sequences in this order.
    pub order: Vec<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SequenceResult {
    pub index: usize,
    pub prompt_len: usize,
    pub join: usize,
    /// The batch sizes this sequence stepped in.
    pub batch_sizes: Vec<usize>,
    /// The first decode step whose logits differ from the sequence alone.
    pub first_difference: Option<usize>,
    pub max_abs: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BatchInvariance {
    pub path: AttnPath,
    pub sequences: Vec<SequenceResult>,
    /// Every sequence bitwise the same in the batch as alone.
    pub bitwise: bool,
}

impl BatchInvariance {
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "batch invariance ({} path): {}\n",
            self.path.name(),
            if self.bitwise {
                "every sequence bitwise the same as alone"
            } else {
                "NOT bitwise"
            }
        );
        for r in &self.sequences {
            s += &format!(
                "  seq {} (prompt {}, joins at step {}, batch sizes {:?}): {}\n",
                r.index,
                r.prompt_len,
                r.join,
                r.batch_sizes,
                match r.first_difference {
                    None => "identical".to_string(),
                    Some(t) => format!("differs from step {t}, max |diff| {:.3e}", r.max_abs),
                }
            );
        }
        s
    }
}

/// Greedy tokens and per-step logits of one sequence alone: prefill, then
/// `steps` decode steps as batches of one.
fn alone<B: Backend>(
    e: &Engine<B>,
    prompt: &[u32],
    steps: usize,
    path: AttnPath,
) -> Result<(Vec<u32>, Vec<Vec<f64>>)> {
    let mut s = e.new_session(prompt.len() + steps)?;
    let first = e.forward(&mut s, prompt, path, false, &mut Default::default())?;
    let mut token = e.backend.argmax(&first)?;
    let (mut tokens, mut rows) = (Vec::new(), Vec::new());
    for _ in 0..steps {
        tokens.push(token);
        let row = e.step_batch(&mut [&mut s], &[token], path)?.remove(0);
        token = crate::logits::argmax(&row) as u32;
        rows.push(row);
    }
    Ok((tokens, rows))
}

/// Runs `plan` alone and batched on `e` by `path` and compares every step.
pub fn batch_invariance<B: Backend>(
    e: &Engine<B>,
    plan: &BatchPlan,
    path: AttnPath,
) -> Result<BatchInvariance> {
    let n = plan.prompts.len();
    let mut sorted = plan.order.clone();
    sorted.sort_unstable();
    if plan.joins.len() != n || sorted != (0..n).collect::<Vec<_>>() || plan.steps == 0 {
        return Err(Error::invalid(
            "batch plan",
            "one join step per prompt, an order that is a permutation of them, at least one step",
        ));
    }
    let longest = plan.prompts.iter().map(Vec::len).max().unwrap_or(0);
    e.check_batch_fits(n, longest + plan.steps)?;
    let solo: Vec<_> = plan
        .prompts
        .iter()
        .map(|p| alone(e, p, plan.steps, path))
        .collect::<Result<_>>()?;
    let mut sessions: Vec<Option<crate::engine::Session<B::Cache>>> =
        (0..n).map(|_| None).collect();
    let mut done = vec![0usize; n];
    let mut got: Vec<Vec<Vec<f64>>> = vec![Vec::new(); n];
    let mut sizes: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut step = 0;
    while done.iter().any(|&d| d < plan.steps) {
        for (i, slot) in sessions.iter_mut().enumerate() {
            if plan.joins[i] == step {
                let p = &plan.prompts[i];
                let mut s = e.new_session(p.len() + plan.steps)?;
                e.forward(&mut s, p, path, false, &mut Default::default())?;
                *slot = Some(s);
            }
        }
        let active: Vec<usize> = plan
            .order
            .iter()
            .copied()
            .filter(|&i| sessions[i].is_some() && done[i] < plan.steps)
            .collect();
        if !active.is_empty() {
            let tokens: Vec<u32> = active.iter().map(|&i| solo[i].0[done[i]]).collect();
            // The active sessions, borrowed mutably, in slot order.
            let mut pool: std::collections::BTreeMap<usize, &mut crate::engine::Session<B::Cache>> =
                sessions
                    .iter_mut()
                    .enumerate()
                    .filter_map(|(i, s)| s.as_mut().map(|s| (i, s)))
                    .collect();
            let mut refs: Vec<_> = active
                .iter()
                .map(|i| pool.remove(i).expect("active sessions are open"))
                .collect();
            let rows = e.step_batch(&mut refs, &tokens, path)?;
            for (&i, row) in active.iter().zip(rows) {
                got[i].push(row);
                sizes[i].push(active.len());
                done[i] += 1;
            }
        }
        step += 1;
        if step > plan.joins.iter().max().copied().unwrap_or(0) + plan.steps + 1 {
            break;
        }
    }
    let sequences: Vec<SequenceResult> = (0..n)
        .map(|i| {
            let mut first = None;
            let mut max_abs = 0f64;
            for (t, (a, b)) in solo[i].1.iter().zip(&got[i]).enumerate() {
                if a != b {
                    first.get_or_insert(t);
                    let m = a
                        .iter()
                        .zip(b)
                        .map(|(x, y)| (x - y).abs())
                        .fold(0.0, f64::max);
                    max_abs = max_abs.max(m);
                }
            }
            SequenceResult {
                index: i,
                prompt_len: plan.prompts[i].len(),
                join: plan.joins[i],
                batch_sizes: sizes[i].clone(),
                first_difference: first,
                max_abs,
            }
        })
        .collect();
    let complete = (0..n).all(|i| got[i].len() == plan.steps);
    Ok(BatchInvariance {
        path,
        bitwise: complete && sequences.iter().all(|s| s.first_difference.is_none()),
        sequences,
    })
}
