//! `lockstep bench --batch 1,8,32`: batched decode speed on CUDA, per batch
//! size x path x reduction mode. Every sequence is prefilled alone and then
//! decodes greedily with the others (`Engine::step_batch_greedy`); a step
//! gives each sequence one token, so throughput is batch x steps / time and
//! a sequence's latency is the time of one step. Deterministic mode keeps
//! each sequence's bits alone (batch invariant); fast mode does not promise
//! it (cuBLAS past eight rows), and the ratio of the two is the price of
//! batch invariance.

use super::{bench_prompt, weight_bytes_per_token, Timing};
use crate::backend::cuda::{CudaOptions, Products, ReductionMode};
use crate::backend::{AttnPath, Backend};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::progress::Progress;
use serde::{Deserialize, Serialize};
use std::time::Instant;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchRow {
    pub batch: usize,
    pub path: AttnPath,
    pub mode: ReductionMode,
    /// Which units computed the products (older reports lack it: CUDA
    /// cores).
    #[serde(default)]
    pub products: Products,
    /// Tokens per second over all sequences, best and median repeat.
    pub best_tok_s: f64,
    pub median_tok_s: f64,
    /// One step (one token of every sequence), best repeat: each
    /// sequence's per-token latency.
    pub best_ms_per_step: f64,
    /// Best steps per second against the weight-bytes roofline of one step
    /// (a step reads the weights once, whatever the batch).
    pub pct_of_weight_roofline: f64,
    pub repeats_tok_s: Vec<f64>,
    /// Distinct greedy outputs of the whole batch over the repeats.
    pub distinct_outputs: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchReport {
    pub model: String,
    pub model_hash: String,
    pub device: String,
    pub copy_bandwidth_gb_s: f64,
    pub weight_bytes_per_step: usize,
    /// copy bandwidth / weight bytes: steps per second at the roofline.
    pub roofline_steps_s: f64,
    pub prompt_tokens: usize,
    pub warmup_steps: usize,
    pub measured_steps: usize,
    pub repeats: usize,
    pub load_s: f64,
    pub rows: Vec<BatchRow>,
}

impl BatchReport {
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "{} on {} (copy {:.0} GB/s, roofline {:.1} steps/s), {} prompt tokens, {} measured steps\n",
            self.model,
            self.device,
            self.copy_bandwidth_gb_s,
            self.roofline_steps_s,
            self.prompt_tokens,
            self.measured_steps
        );
        s += "batch  path   mode               tok/s (best)  ms/step  % roofline  distinct  det/fast\n";
        for r in &self.rows {
            let fast = self
                .rows
                .iter()
                .find(|o| o.batch == r.batch && o.path == r.path && o.mode == ReductionMode::Fast);
            let ratio = match (r.mode, fast) {
                (ReductionMode::Deterministic, Some(f)) => {
                    format!("{:.3}", r.best_tok_s / f.best_tok_s)
                }
                _ => String::new(),
            };
            let mode = match r.products {
                Products::TensorCores => format!("{}, tc", r.mode.name()),
                Products::CudaCores => r.mode.name().to_string(),
            };
            s += &format!(
                "{:>5}  {:<6} {:<18} {:>12.1}  {:>7.3}  {:>10.1}  {:>8}  {ratio}\n",
                r.batch,
                r.path.name(),
                mode,
                r.best_tok_s,
                r.best_ms_per_step,
                r.pct_of_weight_roofline,
                r.distinct_outputs
            );
        }
        s
    }
}

/// The prompt of sequence `s` of a batch: `bench_prompt`'s pattern,
/// shifted per sequence so that companions differ.
pub fn batch_prompt(len: usize, vocab: usize, s: usize) -> Vec<u32> {
    bench_prompt(len, vocab)
        .into_iter()
        .map(|t| ((t as usize + s * 104_729) % vocab) as u32)
        .collect()
}

/// Every sequence's greedy tokens of one batched run.
type BatchTokens = Vec<Vec<u32>>;

/// One timed batched decode: every sequence prefilled alone, then
/// `warmup + steps` batched greedy steps, timed over the last `steps`.
/// Returns (seconds, every sequence's tokens).
fn time_batch<B: Backend>(
    e: &Engine<B>,
    prompts: &[Vec<u32>],
    path: AttnPath,
    warmup: usize,
    steps: usize,
) -> Result<(f64, Vec<Vec<u32>>)> {
    let cap = prompts[0].len() + warmup + steps + 1;
    let mut sessions = Vec::with_capacity(prompts.len());
    let mut tokens = Vec::with_capacity(prompts.len());
    for p in prompts {
        let mut s = e.new_session(cap)?;
        let logits = e.forward(&mut s, p, path, false, &mut Default::default())?;
        tokens.push(e.backend.argmax(&logits)?);
        sessions.push(s);
    }
    let mut out: Vec<Vec<u32>> = tokens.iter().map(|&t| vec![t]).collect();
    let mut start = Instant::now();
    for i in 0..warmup + steps {
        if i == warmup {
            e.backend.synchronize()?;
            start = Instant::now();
        }
        let mut refs: Vec<_> = sessions.iter_mut().collect();
        tokens = e.step_batch_greedy(&mut refs, &tokens, path)?;
        for (o, &t) in out.iter_mut().zip(&tokens) {
            o.push(t);
        }
    }
    e.backend.synchronize()?;
    Ok((start.elapsed().as_secs_f64(), out))
}

/// Times every batch size x path x CUDA setting (mode, products) on GPU 0, repeats going round the
/// configurations (as `cuda_bench`). Each batch is refused up front when
/// its caches would not fit.
pub fn cuda_batch_bench(
    model: &crate::model::Model,
    batches: &[usize],
    paths: &[AttnPath],
    settings: &[CudaOptions],
    t: Timing,
) -> Result<BatchReport> {
    if batches.is_empty() || batches.contains(&0) {
        return Err(Error::invalid("--batch", "batch sizes of at least one"));
    }
    let (e, load_s) = super::load_cuda(model)?;
    let positions = t.prompt_tokens + t.warmup + t.tokens + 1;
    for &b in batches {
        e.check_batch_fits(b, positions)?;
    }
    let bandwidth = e.backend.copy_bandwidth(1 << 30, 10)?;
    let weight_bytes = weight_bytes_per_token(&e.config);
    let roofline = bandwidth * 1e9 / weight_bytes as f64;
    let vocab = e.config.vocab_size;
    let mut configs = Vec::new();
    for &b in batches {
        for &p in paths {
            for &o in settings {
                configs.push((b, p, o.checked()?));
            }
        }
    }
    let mut progress = Progress::new("timing batches", configs.len() * t.repeats);
    // Per configuration: each repeat's seconds and the whole batch's tokens.
    let mut timed: Vec<(Vec<f64>, Vec<BatchTokens>)> =
        vec![(Vec::new(), Vec::new()); configs.len()];
    let mut done = 0;
    for _ in 0..t.repeats {
        for (&(b, path, options), (secs, outs)) in configs.iter().zip(timed.iter_mut()) {
            e.backend.set_options(options)?;
            let prompts: Vec<_> = (0..b)
                .map(|s| batch_prompt(t.prompt_tokens, vocab, s))
                .collect();
            let (s, out) = time_batch(&e, &prompts, path, t.warmup, t.tokens)?;
            secs.push(s);
            outs.push(out);
            done += 1;
            progress.set(done);
        }
    }
    let rows = configs
        .iter()
        .zip(timed)
        .map(|(&(batch, path, options), (secs, mut outs))| {
            let speeds: Vec<f64> = secs.iter().map(|s| (batch * t.tokens) as f64 / s).collect();
            let mut sorted = speeds.clone();
            sorted.sort_by(|a, b| a.total_cmp(b));
            let best = sorted.last().copied().unwrap_or(f64::NAN);
            let median = sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN);
            let step_s = batch as f64 / best;
            outs.sort();
            outs.dedup();
            BatchRow {
                batch,
                path,
                mode: options.mode,
                products: options.products,
                best_tok_s: best,
                median_tok_s: median,
                best_ms_per_step: 1e3 * step_s,
                pct_of_weight_roofline: 100.0 / step_s / roofline,
                repeats_tok_s: speeds,
                distinct_outputs: outs.len(),
            }
        })
        .collect();
    Ok(BatchReport {
        model: model.origin.clone(),
        model_hash: e.model_hash.clone(),
        device: e.backend.device_info().device,
        copy_bandwidth_gb_s: bandwidth,
        weight_bytes_per_step: weight_bytes,
        roofline_steps_s: roofline,
        prompt_tokens: t.prompt_tokens,
        warmup_steps: t.warmup,
        measured_steps: t.tokens,
        repeats: t.repeats,
        load_s,
        rows,
    })
}
