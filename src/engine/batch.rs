//! Batched decode: one step for several independent sequences at once, each
//! with its own KV cache and position, as a serving engine runs them. Every
//! row-wise op (projections, norms, RoPE at each row's own position, the
//! MLP or MoE) runs over the whole batch in one call, so a kernel whose
//! reduction depends on the batch size shows up as a sequence whose bits
//! depend on its companions; attention runs per sequence against its own
//! cache.
//!
//! Sequences join by being prefilled alone (`forward`) and then stepping
//! with the others; they leave by not being passed.

use super::{Engine, Session};
use crate::backend::{AttnPath, Backend};
use crate::error::{Error, Result};

impl<B: Backend> Engine<B> {
    /// One decode step: `tokens[i]` is fed to `sessions[i]` at its next
    /// position. Returns each sequence's logits row, in order.
    pub fn step_batch(
        &self,
        sessions: &mut [&mut Session<B::Cache>],
        tokens: &[u32],
        path: AttnPath,
    ) -> Result<Vec<Vec<f64>>> {
        let be = &self.backend;
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
        let positions: Vec<usize> = sessions.iter().map(|s| s.pos).collect();
        if let Some(&p) = positions
            .iter()
            .find(|&&p| p >= self.config.max_position_embeddings)
        {
            return Err(Error::Prompt(format!(
                "position {p} exceeds max_position_embeddings {}",
                self.config.max_position_embeddings
            )));
        }
        let d = &self.dims;
        let mut x = be.embed(&self.embed, tokens)?;
        let mut h = self.attention_norm(0, &x)?;
        for (l, lw) in self.layers.iter().enumerate() {
            let (q, k, v) = self.attention_inputs(l, &h, &positions, path)?;
            let mut rows = Vec::with_capacity(n);
            for (i, s) in sessions.iter_mut().enumerate() {
                let cache = &mut s.caches[l];
                be.cache_append(cache, &be.rows(&k, i, 1)?, &be.rows(&v, i, 1)?)?;
                rows.push(be.attention(&be.rows(&q, i, 1)?, cache, d, &positions[i..=i])?);
            }
            let a = be.concat_rows(&rows)?;
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
        let logits = be.linear(&f, self.lm_head.as_ref().unwrap_or(&self.embed))?;
        let (v, [rows, cols]) = be.to_host(&logits)?;
        super::finite(
            be,
            "logits",
            || format!("a batched step of {n} sequences"),
            &v,
        )?;
        Ok((0..rows)
            .map(|r| v[r * cols..(r + 1) * cols].to_vec())
            .collect())
    }
}
