//! The backend abstraction the engine is written against, and the backends.
//!
//! Ops take explicit dimensions and return `Result`. Tensors are 2-D
//! (rows x cols, row-major); a per-head op sees `[tokens, heads * head_dim]`.
//! Backend-specific code stays in its module; the engine never asks which
//! device it runs on.

pub mod check;
pub mod cpu;
pub mod cuda;
pub mod mlx;
mod routing;
#[cfg_attr(
    all(feature = "cuda", feature = "mlx"),
    allow(dead_code, unused_macros)
)]
mod stub;

pub use routing::{route, routing_record, RowRouting};

use crate::error::Result;
use crate::model::safetensors::HostTensor;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub use crate::ident::{AttnPath, BackendKind, Numerics};

/// Whether this build has `backend` (a backend without its feature is a
/// stub whose constructors say so).
pub fn compiled(backend: BackendKind) -> bool {
    match backend {
        BackendKind::Cpu => true,
        BackendKind::Mlx | BackendKind::MlxGpu => cfg!(feature = "mlx"),
        BackendKind::Cuda => cfg!(feature = "cuda"),
    }
}

/// Attention geometry of one model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttnDims {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub eps: f64,
    pub rope_theta: f64,
}

impl AttnDims {
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}

/// The host CPU's model name (from /proc/cpuinfo), or the architecture.
/// `Backend::attention_step` one sequence after another: each row's
/// `cache_append` then `attention`, the rows joined. The trait's default,
/// and what a backend with a batched kernel falls back to.
pub fn attention_each<B: Backend + ?Sized>(
    be: &B,
    q: &B::Tensor,
    k: &B::Tensor,
    v: &B::Tensor,
    caches: &mut [&mut B::Cache],
    dims: &AttnDims,
    positions: &[usize],
) -> Result<B::Tensor> {
    let mut rows = Vec::with_capacity(caches.len());
    for (i, cache) in caches.iter_mut().enumerate() {
        be.cache_append(cache, &be.rows(k, i, 1)?, &be.rows(v, i, 1)?)?;
        rows.push(be.attention(&be.rows(q, i, 1)?, cache, dims, &positions[i..=i])?);
    }
    be.concat_rows(&rows)
}

pub fn host_cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// Describes where and how a backend computes; goes into every fingerprint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub backend: BackendKind,
    /// Human-readable device name (CPU model, GPU name).
    pub device: String,
    pub numerics: Numerics,
    /// Versions and settings that change results (driver, library versions,
    /// deterministic mode, ...), sorted by key.
    pub details: BTreeMap<String, String>,
}

/// Weights of one sparse-MoE block.
pub struct MoeWeights<W> {
    pub router: W,
    pub experts: Vec<ExpertWeights<W>>,
    pub top_k: usize,
    pub norm_topk_prob: bool,
}

pub struct ExpertWeights<W> {
    pub gate: W,
    pub up: W,
    pub down: W,
}

/// A config field whose value a backend's kernels do not take, with the
/// values they do.
#[derive(Debug, Clone, PartialEq)]
pub struct UnsupportedDim {
    pub field: &'static str,
    pub value: usize,
    pub supported: &'static str,
}

pub trait Backend {
    type Tensor;
    type Weight;
    /// One layer's key/value cache; row `p` holds position `p`.
    type Cache;

    fn device_info(&self) -> DeviceInfo;

    /// `device_info().backend`, without gathering the rest.
    fn kind(&self) -> BackendKind;

    /// `device_info().numerics`, without gathering the rest.
    fn numerics(&self) -> Numerics;

    /// Makes a checkpoint tensor resident (converting to the backend's storage).
    fn upload(&self, name: &str, t: &HostTensor) -> Result<Self::Weight>;

    /// Stacks the rows of several `[rows_i, cols]` tensors into one weight
    /// (the packed QKV weight of the fused path).
    fn upload_packed(&self, name: &str, parts: &[&HostTensor]) -> Result<Self::Weight>;

    /// Makes one MoE layer's experts resident: `experts[e]` holds expert
    /// e's gate, up and down projections, named `names[e]`. One expert at a
    /// time by default; a backend that routes on its device may keep each
    /// projection of all experts in one stacked tensor (the per-expert
    /// weights then views of it), so that the chosen experts' products can
    /// be gathered without the host knowing which were chosen.
    fn upload_experts(
        &self,
        names: &[[String; 3]],
        experts: &[[HostTensor; 3]],
    ) -> Result<Vec<ExpertWeights<Self::Weight>>> {
        names
            .iter()
            .zip(experts)
            .map(|([g, u, d], [tg, tu, td])| {
                Ok(ExpertWeights {
                    gate: self.upload(g, tg)?,
                    up: self.upload(u, tu)?,
                    down: self.upload(d, td)?,
                })
            })
            .collect()
    }

    /// `[ids.len(), hidden]` rows of the embedding table.
    fn embed(&self, table: &Self::Weight, ids: &[u32]) -> Result<Self::Tensor>;

    /// RMSNorm over consecutive groups of `w.len()` elements of each row.
    fn rms_norm(&self, x: &Self::Tensor, w: &Self::Weight, eps: f64) -> Result<Self::Tensor>;

    /// `x [n, in] @ w[out, in]^T -> [n, out]`.
    fn linear(&self, x: &Self::Tensor, w: &Self::Weight) -> Result<Self::Tensor>;

    /// NeoX-style rotary embedding of each `head_dim` group; row `r` is at `positions[r]`.
    fn rope(
        &self,
        x: &Self::Tensor,
        positions: &[usize],
        head_dim: usize,
        theta: f64,
    ) -> Result<Self::Tensor>;

    /// The fused path: q, k, v from the packed weight, q and k normalised per
    /// head and rotated, in one op with its own accumulation order.
    fn fused_qkv(
        &self,
        x: &Self::Tensor,
        qkv: &Self::Weight,
        q_norm: &Self::Weight,
        k_norm: &Self::Weight,
        dims: &AttnDims,
        positions: &[usize],
    ) -> Result<(Self::Tensor, Self::Tensor, Self::Tensor)>;

    /// The fused path for a forward pass: as `fused_qkv`, with k and v
    /// appended to `cache` (rows at `positions`, which continue the cache)
    /// and q returned. A backend whose fused op writes the cache itself
    /// overrides this.
    #[allow(clippy::too_many_arguments)]
    fn fused_qkv_append(
        &self,
        x: &Self::Tensor,
        qkv: &Self::Weight,
        q_norm: &Self::Weight,
        k_norm: &Self::Weight,
        dims: &AttnDims,
        positions: &[usize],
        cache: &mut Self::Cache,
    ) -> Result<Self::Tensor> {
        let (q, k, v) = self.fused_qkv(x, qkv, q_norm, k_norm, dims, positions)?;
        self.cache_append(cache, &k, &v)?;
        Ok(q)
    }

    fn new_cache(&self, dims: &AttnDims, capacity: usize) -> Result<Self::Cache>;

    /// Appends `k, v [n, kv_dim]` at the end of the cache.
    fn cache_append(
        &self,
        cache: &mut Self::Cache,
        k: &Self::Tensor,
        v: &Self::Tensor,
    ) -> Result<()>;

    /// Causal GQA attention of `q [n, q_dim]` (row `r` at `positions[r]`)
    /// over cache rows `0..=positions[r]`.
    fn attention(
        &self,
        q: &Self::Tensor,
        cache: &Self::Cache,
        dims: &AttnDims,
        positions: &[usize],
    ) -> Result<Self::Tensor>;

    /// One batched decode step's attention: row `i` of `q`, `k` and `v` is
    /// sequence `i`'s new token at `positions[i]`; its k and v go to the end
    /// of `caches[i]` and its query attends over that cache. Each row's bits
    /// must be those of `cache_append` then `attention` for that sequence
    /// alone; the default does exactly that, one sequence after another.
    fn attention_step(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        caches: &mut [&mut Self::Cache],
        dims: &AttnDims,
        positions: &[usize],
    ) -> Result<Self::Tensor> {
        attention_each(self, q, k, v, caches, dims, positions)
    }

    /// Marks the calls until `batch_step(false)` as one batched decode
    /// step, one row per independent sequence. A backend whose products
    /// choose their summation by row count keeps each row's summation what
    /// it is alone there, where its mode promises batch invariance (a
    /// prefill of one sequence may still pick by size). Default: nothing
    /// depends on the row count.
    fn batch_step(&self, _on: bool) {}

    /// The greedy token of every row of `logits` (ties to the lower index,
    /// as `argmax`). Backends may find them on the device.
    fn argmax_rows(&self, logits: &Self::Tensor) -> Result<Vec<u32>> {
        let (v, [rows, cols]) = self.to_host(logits)?;
        Ok((0..rows)
            .map(|r| crate::logits::argmax(&v[r * cols..(r + 1) * cols]) as u32)
            .collect())
    }

    fn add(&self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor>;

    /// `silu(gate) * up`.
    fn swiglu(&self, gate: &Self::Tensor, up: &Self::Tensor) -> Result<Self::Tensor>;

    /// `x + r` (the new residual stream) and its RMSNorm: one launch on
    /// backends that fuse them, with the same bits as `add` then `rms_norm`.
    fn add_rms_norm(
        &self,
        x: &Self::Tensor,
        r: &Self::Tensor,
        w: &Self::Weight,
        eps: f64,
    ) -> Result<(Self::Tensor, Self::Tensor)> {
        let sum = self.add(x, r)?;
        let normed = self.rms_norm(&sum, w, eps)?;
        Ok((sum, normed))
    }

    /// `swiglu(x @ gate^T, x @ up^T)`: the dense MLP's input to its down
    /// product, fused where a backend can (same bits as the separate ops).
    fn gate_up_swiglu(
        &self,
        x: &Self::Tensor,
        gate: &Self::Weight,
        up: &Self::Weight,
    ) -> Result<Self::Tensor> {
        self.swiglu(&self.linear(x, gate)?, &self.linear(x, up)?)
    }

    /// Softmax router, top-k (renormalised if asked), expert SwiGLU MLPs,
    /// weighted sum in ascending expert order.
    fn moe(&self, x: &Self::Tensor, w: &MoeWeights<Self::Weight>) -> Result<Self::Tensor>;

    /// Rows `start..start + n`.
    fn rows(&self, x: &Self::Tensor, start: usize, n: usize) -> Result<Self::Tensor>;

    /// The rows of `parts`, in order, as one tensor (a batched step's
    /// per-sequence attention outputs). The default goes through the host:
    /// exact (activations are stored values), not fast.
    fn concat_rows(&self, parts: &[Self::Tensor]) -> Result<Self::Tensor> {
        let mut data = Vec::new();
        let (mut rows, mut width) = (0, None);
        for p in parts {
            let (v, [r, c]) = self.to_host(p)?;
            if *width.get_or_insert(c) != c {
                return Err(crate::error::Error::Engine {
                    problem: format!("concat_rows: widths {} and {c}", width.unwrap_or(0)),
                });
            }
            rows += r;
            data.extend(v);
        }
        self.activation_from_host(&data, rows, width.unwrap_or(0))
    }

    /// An activation from host values (rounded to the backend's storage type).
    fn activation_from_host(&self, data: &[f64], rows: usize, cols: usize) -> Result<Self::Tensor>;

    /// Values widened to f64 (exact for every storage type) and the shape.
    fn to_host(&self, x: &Self::Tensor) -> Result<(Vec<f64>, [usize; 2])>;

    /// Waits for queued work (MLX evaluates lazily here; CUDA synchronises).
    fn synchronize(&self) -> Result<()>;

    /// The greedy token of the last row of `logits`: the largest value, ties
    /// to the lower index. Backends may find it on the device.
    fn argmax(&self, logits: &Self::Tensor) -> Result<u32> {
        let (v, [rows, cols]) = self.to_host(logits)?;
        Ok(crate::logits::argmax(&v[(rows - 1) * cols..]) as u32)
    }

    // Pipelined greedy decode (MLX). The greedy token stays on the device
    // as a one-row tensor whose evaluation has started, the next step embeds
    // it before the host reads it, and so the host builds step i+1 while the
    // device still computes step i. Backends that keep the defaults decode
    // one step after another, reading each token first.

    /// The greedy token of the last row of `logits` (ties to the lower
    /// index, as `argmax`), left on the device with its evaluation started;
    /// None when the backend does not pipeline decode.
    fn argmax_deferred(&self, _logits: &Self::Tensor) -> Result<Option<Self::Tensor>> {
        Ok(None)
    }

    /// The embedding row of a token that `argmax_deferred` returned.
    fn embed_deferred(&self, _table: &Self::Weight, _token: &Self::Tensor) -> Result<Self::Tensor> {
        Err(crate::error::Error::Engine {
            problem: "this backend does not pipeline decode".into(),
        })
    }

    /// Waits for a token that `argmax_deferred` returned and reads it.
    fn deferred_token(&self, _token: &Self::Tensor) -> Result<u32> {
        Err(crate::error::Error::Engine {
            problem: "this backend does not pipeline decode".into(),
        })
    }

    // Decode-step recording (CUDA graphs). The engine stages each decode
    // step's token and position, runs one step normally (warm-up), records
    // the next between `begin_step_capture` and `end_step_capture`, and then
    // only replays it, advancing the caches itself. Backends without it keep
    // these defaults and every step runs op by op.

    /// Puts the next step's token and position where a recorded step reads them.
    fn stage_step(&self, _token: u32, _position: usize) -> Result<()> {
        Ok(())
    }

    /// Starts recording; false when the backend does not record steps.
    fn begin_step_capture(&self) -> Result<bool> {
        Ok(false)
    }

    fn end_step_capture(&self) -> Result<()> {
        Ok(())
    }

    fn replay_step(&self) -> Result<()> {
        Err(crate::error::Error::Engine {
            problem: "this backend does not record decode steps".into(),
        })
    }

    /// Counts `n` rows that a replayed step appended to `cache`.
    fn cache_advance(&self, _cache: &mut Self::Cache, _n: usize) {}

    /// Drops the recorded step.
    fn release_step(&self) {}

    /// Rows `start..start + rows` of `w` as a weight of their own that shares
    /// `w`'s memory, when the backend can (the engine then keeps q, k and v
    /// as views of the packed QKV weight instead of second copies); None
    /// uploads them separately.
    fn row_view(
        &self,
        _name: &str,
        _w: &Self::Weight,
        _start: usize,
        _rows: usize,
    ) -> Option<Self::Weight> {
        None
    }

    /// The first model dimension this backend's kernels cannot take, if
    /// any: the engine refuses such a model before uploading anything,
    /// rather than failing at the first kernel that meets it.
    fn unsupported_dim(&self, _cfg: &crate::model::config::Qwen3Config) -> Option<UnsupportedDim> {
        None
    }

    /// Free memory on the device in bytes, when the backend can tell: the
    /// engine refuses a model that cannot fit before uploading anything.
    fn free_memory(&self) -> Option<usize> {
        None
    }

    /// Device launches run so far, where the backend counts them (CUDA:
    /// our kernels and cuBLAS calls, a replayed recorded step as the
    /// launches it holds): bench divides a timed run's difference by its
    /// tokens, the launches per token that a small model's decode time
    /// follows.
    fn launches_run(&self) -> Option<u64> {
        None
    }

    /// Starts (or stops) recording the routing of every `moe` call: per
    /// call, per row, the chosen experts and how near the choice was to a
    /// tie, so an MoE comparison can tell a routing near-tie from a bug.
    /// Backends that keep no record ignore it.
    fn record_routing(&self, _on: bool) {}

    /// The routing recorded since recording started or the last take, one
    /// entry per `moe` call in call order (a forward pass calls it once per
    /// MoE layer, in layer order); empty without a record.
    fn take_routing_log(&self) -> Vec<Vec<RowRouting>> {
        Vec::new()
    }
}
