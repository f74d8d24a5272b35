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
                difference_text(r.first_difference, r.max_abs)
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
    check_plan(e, plan)?;
    let solo: Vec<_> = plan
        .prompts
        .iter()
        .map(|p| alone(e, p, plan.steps, path))
        .collect::<Result<_>>()?;
    let feed: Vec<Vec<u32>> = solo.iter().map(|s| s.0.clone()).collect();
    let (got, sizes) = batched(e, plan, &feed, path)?;
    let sequences: Vec<SequenceResult> = (0..n)
        .map(|i| {
            let (first, max_abs) = first_difference(&solo[i].1, &got[i]);
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

/// The plan's shape, and room for it, checked before any work.
fn check_plan<B: Backend>(e: &Engine<B>, plan: &BatchPlan) -> Result<()> {
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
    e.check_batch_fits(n, longest + plan.steps)
}

/// Per sequence of a batched run: its logits row per step, and the batch
/// size of each of its steps.
type Batched = (Vec<Vec<Vec<f64>>>, Vec<Vec<usize>>);

/// Every sequence of `plan` decoded together, sequence `i` fed
/// `feed[i][t]` at its step `t` (at least `plan.steps` tokens each).
fn batched<B: Backend>(
    e: &Engine<B>,
    plan: &BatchPlan,
    feed: &[Vec<u32>],
    path: AttnPath,
) -> Result<Batched> {
    let n = plan.prompts.len();
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
            let tokens: Vec<u32> = active.iter().map(|&i| feed[i][done[i]]).collect();
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
    Ok((got, sizes))
}

/// One batch a sequence decodes in (`composition_envelope`): how many
/// sequences, the sequence's slot among them, and the step the companions
/// join at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Composition {
    pub batch: usize,
    pub slot: usize,
    pub companions_join: usize,
}

/// `k` compositions: batch sizes going round 2, 3, 5, 8, 9, 12, 16, 24 and
/// 32 (either side of one GEMV pass of eight rows and of the tensor-core
/// kernel's tile sizes), the sequence at a slot that moves with the
/// composition, companions joining at the first or the second step.
pub fn compositions(k: usize) -> Vec<Composition> {
    const SIZES: [usize; 9] = [2, 3, 5, 8, 9, 12, 16, 24, 32];
    (0..k)
        .map(|c| {
            let batch = SIZES[c % SIZES.len()];
            Composition {
                batch,
                slot: (c * 5) % batch,
                companions_join: c % 2,
            }
        })
        .collect()
}

#[derive(Debug, Clone, Serialize)]
pub struct CompositionRun {
    pub composition: Composition,
    /// The first decode step whose logits differ from the sequence alone.
    pub first_difference: Option<usize>,
    pub max_abs: f64,
}

/// One sequence decoded alone and in each of several batch compositions,
/// fed the alone run's tokens: the spread that batching adds.
#[derive(Debug, Clone, Serialize)]
pub struct CompositionEnvelope {
    pub path: AttnPath,
    pub prompt_len: usize,
    pub steps: usize,
    pub runs: Vec<CompositionRun>,
    /// Per step, the bitwise-distinct logits over the sequence alone and in
    /// every composition (1: batching changes nothing).
    pub distinct_per_step: Vec<usize>,
    /// Every composition bitwise the same as alone.
    pub bitwise: bool,
}

impl CompositionEnvelope {
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "batch compositions ({} path, prompt {} tokens, {} steps): {}\n",
            self.path.name(),
            self.prompt_len,
            self.steps,
            if self.bitwise {
                "every composition bitwise the same as alone"
            } else {
                "NOT bitwise"
            }
        );
        s += &format!(
            "  distinct logits per step (alone and {} compositions): {:?}\n",
            self.runs.len(),
            self.distinct_per_step
        );
        for r in &self.runs {
            let c = r.composition;
            s += &format!(
                "  batch {:>2}, slot {:>2}, companions join at step {}: {}\n",
                c.batch,
                c.slot,
                c.companions_join,
                difference_text(r.first_difference, r.max_abs)
            );
        }
        s
    }
}

/// `prompt` decoded alone for `steps` steps, then in each of `comps` with
/// companions of other lengths fed fixed tokens of their own, every step
/// compared with the run alone.
pub fn composition_envelope<B: Backend>(
    e: &Engine<B>,
    prompt: &[u32],
    comps: &[Composition],
    steps: usize,
    path: AttnPath,
) -> Result<CompositionEnvelope> {
    if comps.is_empty() || steps == 0 || prompt.is_empty() {
        return Err(Error::invalid(
            "batch compositions",
            "a prompt, at least one composition and at least one step",
        ));
    }
    if let Some(c) = comps
        .iter()
        .find(|c| c.batch == 0 || c.slot >= c.batch || c.companions_join > 1)
    {
        return Err(Error::invalid(
            "batch compositions",
            format!("{c:?}: a slot inside the batch, companions joining at step 0 or 1"),
        ));
    }
    let (tokens, solo) = alone(e, prompt, steps, path)?;
    let ids = 400.min(e.config.vocab_size.saturating_sub(1)).max(1);
    let mut seen: Vec<std::collections::BTreeSet<Vec<u64>>> = solo
        .iter()
        .map(|row| std::iter::once(bits(row)).collect())
        .collect();
    let mut runs = Vec::with_capacity(comps.len());
    for (ci, &c) in comps.iter().enumerate() {
        // Sequence 0 is the one measured; companions 1.. have prompts of
        // 3, 5, 7, ... tokens that differ per composition.
        let mut prompts = vec![prompt.to_vec()];
        prompts.extend((1..c.batch).map(|i| {
            (0..1 + 2 * i)
                .map(|t| (1 + (t * 37 + i * 11 + ci * 101) % ids) as u32)
                .collect::<Vec<u32>>()
        }));
        let mut feed = vec![tokens.clone()];
        feed.extend(
            prompts[1..]
                .iter()
                .map(|p| (0..steps).map(|t| p[t % p.len()]).collect()),
        );
        let mut order: Vec<usize> = (1..c.batch).collect();
        order.insert(c.slot, 0);
        let plan = BatchPlan {
            joins: (0..c.batch)
                .map(|i| if i == 0 { 0 } else { c.companions_join })
                .collect(),
            prompts,
            steps,
            order,
        };
        check_plan(e, &plan)?;
        let (got, _) = batched(e, &plan, &feed, path)?;
        for (t, row) in got[0].iter().enumerate() {
            seen[t].insert(bits(row));
        }
        let (first, max_abs) = first_difference(&solo, &got[0]);
        runs.push(CompositionRun {
            composition: c,
            first_difference: first,
            max_abs,
        });
    }
    Ok(CompositionEnvelope {
        path,
        prompt_len: prompt.len(),
        steps,
        bitwise: runs.iter().all(|r| r.first_difference.is_none()),
        distinct_per_step: seen.iter().map(|s| s.len()).collect(),
        runs,
    })
}

/// The first step whose logits differ between a run alone and batched,
/// and the largest difference over every step.
fn first_difference(alone: &[Vec<f64>], batched: &[Vec<f64>]) -> (Option<usize>, f64) {
    let mut first = None;
    let mut max_abs = 0f64;
    for (t, (a, b)) in alone.iter().zip(batched).enumerate() {
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
    (first, max_abs)
}

fn difference_text(first: Option<usize>, max_abs: f64) -> String {
    match first {
        None => "identical".to_string(),
        Some(t) => format!("differs from step {t}, max |diff| {max_abs:.3e}"),
    }
}

/// A logits row's exact bits (distinct counting).
fn bits(row: &[f64]) -> Vec<u64> {
    row.iter().map(|v| v.to_bits()).collect()
}
