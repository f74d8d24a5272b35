//! Batched decode: one step for several independent sequences at once, each
//! with its own KV cache and position, as a serving engine runs them. Every
//! row-wise op (projections, norms, RoPE at each row's own position, the
//! MLP or MoE) runs over the whole batch in one call, so a kernel whose
//! reduction depends on the batch size shows up as a sequence whose bits
//! depend on its companions; attention (`Backend::attention_step`) gives
//! each row its own cache.
//!
//! Sequences join by being prefilled alone (`forward`) and then stepping
//! with the others; they leave by not being passed.

use super::{Engine, Session};
use crate::backend::{AttnPath, Backend};
use crate::error::{Error, Result};

/// Keeps the backend in its batched-step state while a step runs, and
/// takes it out however the step ends.
struct BatchStep<'a, B: Backend>(&'a B);

impl<'a, B: Backend> BatchStep<'a, B> {
    fn begin(be: &'a B) -> Self {
        be.batch_step(true);
        BatchStep(be)
    }
}

impl<B: Backend> Drop for BatchStep<'_, B> {
    fn drop(&mut self) {
        self.0.batch_step(false);
    }
}

impl<B: Backend> Engine<B> {
    /// One decode step: `tokens[i]` is fed to `sessions[i]` at its next
    /// position. Returns each sequence's logits row, in order.
    pub fn step_batch(
        &self,
        sessions: &mut [&mut Session<B::Cache>],
        tokens: &[u32],
        path: AttnPath,
    ) -> Result<Vec<Vec<f64>>> {
        let n = tokens.len();
        let logits = self.step_batch_logits(sessions, tokens, path)?;
        let (v, [rows, cols]) = self.backend.to_host(&logits)?;
        super::finite(
            &self.backend,
            "logits",
            || format!("a batched step of {n} sequences"),
            &v,
        )?;
        Ok((0..rows)
            .map(|r| v[r * cols..(r + 1) * cols].to_vec())
            .collect())
    }

    /// `step_batch` that returns each sequence's greedy token instead of
    /// its logits (found on the device where the backend can), for serving
    /// speed: the logits never cross to the host.
    pub fn step_batch_greedy(
        &self,
        sessions: &mut [&mut Session<B::Cache>],
        tokens: &[u32],
        path: AttnPath,
    ) -> Result<Vec<u32>> {
        let logits = self.step_batch_logits(sessions, tokens, path)?;
        self.backend.argmax_rows(&logits)
    }

    /// Why `batch` sequences of `positions` positions each cannot be decoded
    /// together: past the model's positions, or bf16 KV caches past the
    /// memory the backend reports free. Checked before any cache is made.
    pub fn check_batch_fits(&self, batch: usize, positions: usize) -> Result<()> {
        let e = self;
        let max = e.config.max_position_embeddings;
        if positions > max {
            return Err(Error::invalid(
                "batch",
                format!("{positions} positions per sequence exceed max_position_embeddings {max}"),
            ));
        }
        let per_seq = positions
            .saturating_mul(e.config.num_hidden_layers)
            .saturating_mul(2 * e.dims.kv_dim() * 2);
        let need = per_seq.saturating_mul(batch);
        if let Some(free) = e.backend.free_memory() {
            if need > free {
                return Err(Error::invalid(
                    "batch",
                    format!(
                        "{batch} sequences of {positions} positions need {need} bytes of KV cache; {} has {free} free",
                        e.backend.kind()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Why a batched step cannot take these sequences, checked before any
    /// work: one token each, and every sequence below its cache's capacity
    /// and the model's positions.
    fn refuse_batch(&self, sessions: &[&mut Session<B::Cache>], tokens: &[u32]) -> Result<()> {
        let n = tokens.len();
        if n == 0 || sessions.len() != n {
            return Err(Error::invalid(
                "batch",
                format!(
                    "{} tokens for {} sequences (one each, at least one)",
                    n,
                    sessions.len()
                ),
            ));
        }
        for (i, s) in sessions.iter().enumerate() {
            if s.pos >= self.config.max_position_embeddings {
                return Err(Error::Prompt(format!(
                    "sequence {i} of the batch: position {} exceeds max_position_embeddings {}",
                    s.pos, self.config.max_position_embeddings
                )));
            }
            if s.pos >= s.capacity {
                return Err(Error::invalid(
                    "batch",
                    format!(
                        "sequence {i}: its KV cache holds {} positions and is full",
                        s.capacity
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The step itself; the logits stay on the backend.
    fn step_batch_logits(
        &self,
        sessions: &mut [&mut Session<B::Cache>],
        tokens: &[u32],
        path: AttnPath,
    ) -> Result<B::Tensor> {
        self.refuse_batch(sessions, tokens)?;
        let be = &self.backend;
        let _step = BatchStep::begin(be);
        let positions: Vec<usize> = sessions.iter().map(|s| s.pos).collect();
        let d = &self.dims;
        let mut x = be.embed(&self.embed, tokens)?;
        let mut h = self.attention_norm(0, &x)?;
        for (l, lw) in self.layers.iter().enumerate() {
            let (q, k, v) = self.attention_inputs(l, &h, &positions, path)?;
            let mut caches: Vec<&mut B::Cache> =
                sessions.iter_mut().map(|s| &mut s.caches[l]).collect();
            let a = be.attention_step(&q, &k, &v, &mut caches, d, &positions)?;
            let (x1, h2) = be.add_rms_norm(&x, &be.linear(&a, &lw.o)?, &lw.post_norm, d.eps)?;
            let m = self.mlp(l, &h2)?;
            let (out, next) = self.residual_and_next_norm(l, &x1, &m)?;
            x = out;
            if let Some(next) = next {
                h = next;
            }
        }
        for s in sessions.iter_mut() {
            s.pos += 1;
        }
        let f = be.rms_norm(&x, &self.final_norm, d.eps)?;
        be.linear(&f, self.lm_head.as_ref().unwrap_or(&self.embed))
    }
}
