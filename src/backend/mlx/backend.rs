//! `MlxBackend`: the `Backend` trait over MLX arrays on `Device::cpu()`.
//!
//! This file holds the types, shape checks, host transfers and evaluation;
//! `ops.rs` holds the MLX graphs of the ops and `fused.rs` the compiled
//! fused path. Shapes are checked here, before any MLX call, so a mismatch
//! is an `Error::Shape` naming the op rather than an MLX exception.

use super::cuda_kernel::QkNormRopeCuda;
use super::fused::{FusedKey, FusedQkv};
use super::ops;
use super::{MlxBuild, MlxDevice, MlxFaults, MlxFused};
use crate::backend::RowRouting;
use crate::backend::{
    check, AttnDims, Backend, BackendKind, DeviceInfo, ExpertWeights, MoeWeights,
};
use crate::error::{Error, Result};
use crate::model::safetensors::HostTensor;
use half::bf16;
use mlx_rs::error::Exception;
use mlx_rs::ops::indexing::TryIndexOp;
use mlx_rs::{Array, Dtype, Stream};
use std::cell::RefCell;
use std::collections::BTreeMap;

/// An activation: a bf16 array of shape `[rows, cols]`.
#[derive(Clone)]
pub struct MlxTensor {
    pub(super) array: Array,
    pub(super) rows: usize,
    pub(super) cols: usize,
}

impl MlxTensor {
    pub fn array(&self) -> &Array {
        &self.array
    }

    pub fn shape(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }
}

/// A resident weight: bf16, `[rows, cols]` (a 1-D checkpoint tensor is one row).
pub struct MlxWeight {
    pub name: String,
    pub(super) array: Array,
    pub rows: usize,
    pub cols: usize,
    /// An MoE expert's projection: the `[experts, rows, cols]` array of
    /// every expert's, of which `array` is a view.
    pub(super) stack: Option<Array>,
}

impl MlxWeight {
    /// The weight as a 1-D array (norm weights).
    fn flat(&self) -> std::result::Result<Array, Exception> {
        self.array.reshape(&[(self.rows * self.cols) as i32])
    }
}

/// One layer's key/value cache: `[len, kv_dim]` each, grown by concatenation.
pub struct MlxCache {
    pub len: usize,
    pub kv_dim: usize,
    k: Option<Array>,
    v: Option<Array>,
}

/// The MLX backend. Not `Send`: MLX streams and compiled functions belong to
/// the thread that made them; make one backend per thread.
pub struct MlxBackend {
    pub(super) stream: Stream,
    pub(super) device: MlxDevice,
    /// What the loaded libmlx was built for.
    pub(super) build: MlxBuild,
    /// GPU 0 as MLX describes it (GPU device only).
    pub(super) gpu: BTreeMap<String, String>,
    /// lockstep's fused CUDA kernel (MLX's GPU of a CUDA build only).
    pub(super) cuda_kernel: Option<QkNormRopeCuda>,
    /// What the fused path runs now (`Kernel` only with `cuda_kernel`).
    pub(super) fused_with: std::cell::Cell<MlxFused>,
    /// Whether greedy decode queues step i+1 before reading token i.
    pub(super) pipelined: std::cell::Cell<bool>,
    pub(super) moe_routing: std::cell::Cell<super::MlxMoeRouting>,
    pub(super) faults: MlxFaults,
    /// One compiled fused function per attention geometry.
    pub(super) fused: RefCell<BTreeMap<FusedKey, FusedQkv>>,
    /// Arrays produced since the last `to_host` / `synchronize`.
    pub(super) pending: RefCell<Vec<Array>>,
    /// Routing of every `moe` call, when recording (diagnostics).
    pub(super) routing_log: RefCell<Option<Vec<Vec<RowRouting>>>>,
    pub(super) mlx_version: String,
    /// The fused path's Metal kernel, on a GPU stream only (untested).
    #[cfg(any(target_os = "macos", feature = "mlx-metal-check"))]
    pub(super) metal: Option<super::metal::QkNormRopeKernel>,
}

/// A bf16 tensor's bytes seen as its u16 bits without a copy, where they
/// are 2-byte aligned (always, for safetensors data and synthetic tensors)
/// and the host is little-endian (the file's byte order); else None.
fn bf16_bits_in_place<'a>(t: &'a HostTensor) -> Option<&'a [u16]> {
    if t.dtype != crate::model::safetensors::Dtype::BF16 || cfg!(target_endian = "big") {
        return None;
    }
    // SAFETY: every bit pattern is a valid u16, and align_to only hands out
    // the aligned middle of the slice.
    let (head, bits, tail) = unsafe { t.bytes.align_to::<u16>() };
    (head.is_empty() && tail.is_empty()).then_some(bits)
}

/// Maps MLX's exceptions into the crate's error, naming the op.
pub(super) trait OrBackendError<T> {
    fn or_err(self, backend: BackendKind, op: &str) -> Result<T>;
}

impl<T> OrBackendError<T> for std::result::Result<T, Exception> {
    fn or_err(self, backend: BackendKind, op: &str) -> Result<T> {
        self.map_err(|e| Error::Backend {
            backend,
            problem: format!("{op}: {}", e.what()),
        })
    }
}

pub(super) fn shape_err(op: &'static str, problem: String) -> Error {
    Error::Shape { op, problem }
}

pub(super) fn to_i32(backend: BackendKind, v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::Backend {
        backend,
        problem: format!("{what} {v} does not fit MLX's 32-bit shapes and indices"),
    })
}

impl MlxBackend {
    /// Runs `f` with this backend's stream as the default for new ops.
    pub(super) fn on<T>(
        &self,
        op: &str,
        f: impl FnOnce() -> std::result::Result<T, Exception>,
    ) -> Result<T> {
        mlx_rs::with_stream(&self.stream, f).or_err(self.kind(), op)
    }

    /// Wraps an op's output, remembering it for the next evaluation.
    pub(super) fn out(&self, array: Array, rows: usize, cols: usize) -> MlxTensor {
        self.pending.borrow_mut().push(array.clone());
        MlxTensor { array, rows, cols }
    }

    /// Evaluates every pending array together with `extra`.
    fn flush(&self, extra: Option<&Array>) -> Result<()> {
        let pending = std::mem::take(&mut *self.pending.borrow_mut());
        self.on("eval", || {
            mlx_rs::transforms::eval(pending.iter().chain(extra))
        })
    }

    fn bf16_array(&self, values: Vec<bf16>, rows: usize, cols: usize) -> Result<Array> {
        self.bf16_array_from(&values, rows, cols)
    }

    fn bf16_array_from(&self, values: &[bf16], rows: usize, cols: usize) -> Result<Array> {
        Ok(Array::from_slice(
            values,
            &[
                to_i32(self.kind(), rows, "rows")?,
                to_i32(self.kind(), cols, "columns")?,
            ],
        ))
    }

    fn positions(&self, positions: &[usize], shift: usize) -> Result<Array> {
        let p = positions
            .iter()
            .map(|&p| to_i32(self.kind(), p + shift, "position"))
            .collect::<Result<Vec<i32>>>()?;
        Ok(Array::from_slice(&p, &[p.len() as i32]))
    }
}

impl Backend for MlxBackend {
    type Tensor = MlxTensor;
    type Weight = MlxWeight;
    type Cache = MlxCache;

    fn kind(&self) -> BackendKind {
        self.device.kind()
    }

    fn numerics(&self) -> crate::ident::Numerics {
        crate::ident::Numerics::Bf16
    }

    fn record_routing(&self, on: bool) {
        *self.routing_log.borrow_mut() = on.then(Vec::new);
    }

    fn take_routing_log(&self) -> Vec<Vec<RowRouting>> {
        self.routing_log
            .borrow_mut()
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    fn device_info(&self) -> DeviceInfo {
        self.describe()
    }

    /// On the CPU device the host's available memory. On a CUDA GPU, MLX
    /// allocates managed memory that the host writes first (a checkpoint's
    /// tensors are copied in before any kernel runs), so a model must fit
    /// both the host's available memory and what MLX's allocator allows
    /// beyond what it already holds (its limit: 80% of the card).
    fn free_memory(&self) -> Option<usize> {
        let host = crate::util::host_memory_available();
        match self.device {
            MlxDevice::Cpu => host,
            MlxDevice::Gpu => {
                let limit = mlx_rs::memory::memory_limit().ok()?;
                let used = mlx_rs::memory::active_memory().unwrap_or(0);
                let gpu = limit.saturating_sub(used);
                Some(host.map_or(gpu, |h| h.min(gpu)))
            }
        }
    }

    fn upload(&self, name: &str, t: &HostTensor) -> Result<MlxWeight> {
        self.upload_packed(name, &[t])
    }

    fn upload_packed(&self, name: &str, parts: &[&HostTensor]) -> Result<MlxWeight> {
        let (rows, cols) = crate::backend::check::packed(name, parts)?;
        if let [t] = parts {
            if let Some(bits) = bf16_bits_in_place(t) {
                // One bf16 tensor: MLX copies straight from the checkpoint's
                // bytes (no second host copy of a 30B-parameter model).
                use half::slice::HalfBitsSliceExt;
                return Ok(MlxWeight {
                    name: name.to_string(),
                    array: self.bf16_array_from(bits.reinterpret_cast::<bf16>(), rows, cols)?,
                    rows,
                    cols,
                    stack: None,
                });
            }
        }
        // bf16 storage; f16/f32 checkpoints are rounded to bf16 as the CPU
        // reference's bf16 mode (and transformers with dtype=bfloat16) does.
        let mut values = Vec::with_capacity(rows * cols);
        for t in parts {
            if let Some(bits) = bf16_bits_in_place(t) {
                // One copy of the bits (a layer's stacked experts at 30B-A3B
                // are 0.4 GB a projection).
                use half::slice::HalfBitsSliceExt;
                values.extend_from_slice(bits.reinterpret_cast::<bf16>());
            } else if t.dtype == crate::model::safetensors::Dtype::BF16 {
                // Already bf16: the bits as they are (a per-value conversion
                // of a 30B-parameter checkpoint takes minutes of host time).
                values.extend(
                    t.bytes
                        .chunks_exact(2)
                        .map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]]))),
                );
            } else {
                values.extend(
                    (0..t.numel()).map(|i| bf16::from_bits(crate::util::bf16_bits(t.get_f32(i)))),
                );
            }
        }
        Ok(MlxWeight {
            name: name.to_string(),
            array: self.bf16_array(values, rows, cols)?,
            rows,
            cols,
            stack: None,
        })
    }

    /// Each projection of all the layer's experts as one `[experts, rows,
    /// cols]` array, every expert's weight a view of it (`moe.rs`).
    fn upload_experts(
        &self,
        names: &[[String; 3]],
        experts: &[[HostTensor; 3]],
    ) -> Result<Vec<ExpertWeights<MlxWeight>>> {
        self.stack_experts(names, experts)
    }

    fn embed(&self, table: &MlxWeight, ids: &[u32]) -> Result<MlxTensor> {
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= table.rows) {
            return Err(Error::Prompt(format!(
                "token id {id} is outside the vocabulary (size {})",
                table.rows
            )));
        }
        let idx: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
        let idx = Array::from_slice(&idx, &[idx.len() as i32]);
        let a = self.on("embed", || table.array.take_axis(&idx, 0))?;
        Ok(self.out(a, ids.len(), table.cols))
    }

    fn rms_norm(&self, x: &MlxTensor, w: &MlxWeight, eps: f64) -> Result<MlxTensor> {
        check::rms_norm(x.cols, w.rows * w.cols)?;
        let a = self.on("rms_norm", || {
            ops::rms_norm_groups(&x.array, &w.flat()?, eps as f32)
        })?;
        Ok(self.out(a, x.rows, x.cols))
    }

    fn linear(&self, x: &MlxTensor, w: &MlxWeight) -> Result<MlxTensor> {
        check::linear((x.rows, x.cols), &w.name, (w.rows, w.cols))?;
        let a = self.on("linear", || ops::linear(&x.array, &w.array))?;
        Ok(self.out(a, x.rows, w.rows))
    }

    fn rope(
        &self,
        x: &MlxTensor,
        positions: &[usize],
        head_dim: usize,
        theta: f64,
    ) -> Result<MlxTensor> {
        check::rope((x.rows, x.cols), positions.len(), head_dim)?;
        let pos = self.positions(positions, 0)?;
        let a = self.on("rope", || {
            ops::rope(&x.array, &pos, head_dim as i32, theta as f32)
        })?;
        Ok(self.out(a, x.rows, x.cols))
    }

    fn fused_qkv(
        &self,
        x: &MlxTensor,
        qkv: &MlxWeight,
        q_norm: &MlxWeight,
        k_norm: &MlxWeight,
        dims: &AttnDims,
        positions: &[usize],
    ) -> Result<(MlxTensor, MlxTensor, MlxTensor)> {
        let (qd, kd, hd) = (dims.q_dim(), dims.kv_dim(), dims.head_dim);
        check::fused_qkv(
            (x.rows, x.cols),
            (qkv.rows, qkv.cols),
            dims,
            positions.len(),
        )?;
        let (qw, kw) = (q_norm.rows * q_norm.cols, k_norm.rows * k_norm.cols);
        if qw != hd || kw != hd || hd % 2 != 0 {
            return Err(shape_err(
                "fused_qkv",
                format!("norm widths {qw} and {kw} for head_dim {hd}"),
            ));
        }
        let pos = self.positions(positions, self.faults.fused_rope_position_offset)?;
        #[cfg(any(target_os = "macos", feature = "mlx-metal-check"))]
        if let (Some(kernel), true) = (&self.metal, x.rows > 0) {
            let outs = self.on("fused_qkv (metal)", || {
                let proj = ops::linear(&x.array, &qkv.array)?;
                kernel.apply(&proj, &q_norm.flat()?, &k_norm.flat()?, &pos, dims)
            })?;
            return self.fused_outputs(outs, x.rows, qd, kd);
        }
        if let (Some(kernel), MlxFused::Kernel) = (&self.cuda_kernel, self.fused_with.get()) {
            if x.cols % 8 != 0 || hd > 256 {
                return Err(shape_err(
                    "fused_qkv",
                    format!(
                        "the fused CUDA kernel needs hidden a multiple of 8 (16-byte loads) and head_dim <= 256 (one block per head); hidden {}, head_dim {hd}",
                        x.cols
                    ),
                ));
            }
            if x.rows == 0 {
                // No block to launch: empty outputs of the right widths.
                let outs = self.on("fused_qkv (no rows)", || {
                    [qd, kd, kd]
                        .iter()
                        .map(|&w| mlx_rs::ops::zeros_dtype(&[0, w as i32], Dtype::Bfloat16))
                        .collect()
                })?;
                return self.fused_outputs(outs, 0, qd, kd);
            }
            let outs = self.on("fused_qkv (cuda kernel)", || {
                kernel.apply(
                    [&x.array, &qkv.array, &q_norm.flat()?, &k_norm.flat()?, &pos],
                    dims,
                    &self.stream,
                )
            })?;
            return self.fused_outputs(outs, x.rows, qd, kd);
        }
        let key = FusedKey::new(dims);
        let mut cache = self.fused.borrow_mut();
        let outs = self.on("fused_qkv", || {
            let f = match cache.entry(key) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => e.insert(FusedQkv::new(dims)),
            };
            f.call(&[
                x.array.clone(),
                qkv.array.clone(),
                q_norm.flat()?,
                k_norm.flat()?,
                pos,
            ])
        })?;
        self.fused_outputs(outs, x.rows, qd, kd)
    }

    fn new_cache(&self, dims: &AttnDims, _capacity: usize) -> Result<MlxCache> {
        Ok(MlxCache {
            len: 0,
            kv_dim: dims.kv_dim(),
            k: None,
            v: None,
        })
    }

    fn cache_append(&self, cache: &mut MlxCache, k: &MlxTensor, v: &MlxTensor) -> Result<()> {
        if k.cols != cache.kv_dim || v.cols != cache.kv_dim || k.rows != v.rows {
            return Err(shape_err(
                "cache_append",
                format!(
                    "k {}x{}, v {}x{}, cache rows of {}",
                    k.rows, k.cols, v.rows, v.cols, cache.kv_dim
                ),
            ));
        }
        let grow = |old: &Option<Array>, new: &Array| match old {
            None => Ok(new.clone()),
            Some(old) => mlx_rs::ops::concatenate(&[old, new], 0),
        };
        let (nk, nv) = self.on("cache_append", || {
            Ok((grow(&cache.k, &k.array)?, grow(&cache.v, &v.array)?))
        })?;
        self.pending.borrow_mut().extend([nk.clone(), nv.clone()]);
        cache.k = Some(nk);
        cache.v = Some(nv);
        cache.len += k.rows;
        Ok(())
    }

    fn attention(
        &self,
        q: &MlxTensor,
        cache: &MlxCache,
        dims: &AttnDims,
        positions: &[usize],
    ) -> Result<MlxTensor> {
        if q.cols != dims.q_dim()
            || positions.len() != q.rows
            || dims.n_kv_heads == 0
            || dims.n_heads % dims.n_kv_heads != 0
        {
            return Err(shape_err(
                "attention",
                format!(
                    "q {}x{} for {} heads ({} kv heads) of {}",
                    q.rows, q.cols, dims.n_heads, dims.n_kv_heads, dims.head_dim
                ),
            ));
        }
        let (Some(k), Some(v)) = (&cache.k, &cache.v) else {
            return Err(shape_err("attention", "the cache is empty".into()));
        };
        let Some(&last) = positions.iter().max() else {
            return Ok(self.out(q.array.clone(), 0, q.cols));
        };
        if last >= cache.len {
            return Err(shape_err(
                "attention",
                format!("position {last} but the cache holds {} rows", cache.len),
            ));
        }
        // Keys 0..=last; row r sees keys 0..=positions[r].
        let keys = last + 1;
        let contiguous_tail = positions
            .iter()
            .enumerate()
            .all(|(r, &p)| p + positions.len() == keys + r);
        let mask = if contiguous_tail && q.rows == 1 {
            ops::AttnMask::None
        } else if contiguous_tail {
            // MLX's causal mode puts the queries at the last rows of the keys.
            ops::AttnMask::Causal
        } else {
            let m: Vec<bool> = positions
                .iter()
                .flat_map(|&p| (0..keys).map(move |j| j <= p))
                .collect();
            ops::AttnMask::Explicit(Array::from_slice(
                &m,
                &[
                    to_i32(self.kind(), q.rows, "rows")?,
                    to_i32(self.kind(), keys, "keys")?,
                ],
            ))
        };
        let a = self.on("attention", || {
            let (k, v) = if keys == cache.len {
                (k.clone(), v.clone())
            } else {
                (k.try_index(0..keys as i32)?, v.try_index(0..keys as i32)?)
            };
            ops::attention(&q.array, &k, &v, dims, &mask)
        })?;
        Ok(self.out(a, q.rows, q.cols))
    }

    fn add(&self, a: &MlxTensor, b: &MlxTensor) -> Result<MlxTensor> {
        check::same_shape("add", (a.rows, a.cols), (b.rows, b.cols))?;
        let s = self.on("add", || a.array.add(&b.array))?;
        Ok(self.out(s, a.rows, a.cols))
    }

    fn swiglu(&self, gate: &MlxTensor, up: &MlxTensor) -> Result<MlxTensor> {
        check::same_shape("swiglu", (gate.rows, gate.cols), (up.rows, up.cols))?;
        let s = self.on("swiglu", || ops::swiglu(&gate.array, &up.array))?;
        Ok(self.out(s, gate.rows, gate.cols))
    }

    fn moe(&self, x: &MlxTensor, w: &MoeWeights<MlxWeight>) -> Result<MlxTensor> {
        self.moe_layer(x, w)
    }

    fn rows(&self, x: &MlxTensor, start: usize, n: usize) -> Result<MlxTensor> {
        if start + n > x.rows {
            return Err(shape_err(
                "rows",
                format!("rows {start}..{} of {}", start + n, x.rows),
            ));
        }
        let (s, e) = (
            to_i32(self.kind(), start, "row")?,
            to_i32(self.kind(), start + n, "row")?,
        );
        let a = self.on("rows", || x.array.try_index(s..e))?;
        Ok(self.out(a, n, x.cols))
    }

    fn activation_from_host(&self, data: &[f64], rows: usize, cols: usize) -> Result<MlxTensor> {
        if data.len() != rows * cols {
            return Err(shape_err(
                "activation_from_host",
                format!("{} values for {rows}x{cols}", data.len()),
            ));
        }
        let values = data
            .iter()
            .map(|&v| bf16::from_bits(crate::util::bf16_bits(v as f32)))
            .collect();
        let a = self.bf16_array(values, rows, cols)?;
        Ok(MlxTensor {
            array: a,
            rows,
            cols,
        })
    }

    fn to_host(&self, x: &MlxTensor) -> Result<(Vec<f64>, [usize; 2])> {
        self.flush(Some(&x.array))?;
        let v = self.host_f32(&x.array, "to_host")?;
        Ok((v.into_iter().map(f64::from).collect(), x.shape()))
    }

    fn argmax(&self, logits: &MlxTensor) -> Result<u32> {
        let token = self.on("argmax", || ops::greedy_token(&logits.array))?;
        self.flush(Some(&token))?;
        self.token_value(&token)
    }

    fn argmax_deferred(&self, logits: &MlxTensor) -> Result<Option<MlxTensor>> {
        if !self.pipelined.get() {
            return Ok(None);
        }
        let token = self.on("argmax", || ops::greedy_token(&logits.array))?;
        // Everything still pending feeds the token (the caches, the
        // logits), so evaluating the token evaluates the step; MLX's graph
        // keeps what it needs, and the list is let go.
        self.pending.borrow_mut().clear();
        self.on("async_eval", || mlx_rs::transforms::async_eval([&token]))?;
        Ok(Some(MlxTensor {
            array: token,
            rows: 1,
            cols: 1,
        }))
    }

    fn embed_deferred(&self, table: &MlxWeight, token: &MlxTensor) -> Result<MlxTensor> {
        let shift = self.faults.pipelined_token_shift;
        let vocab = to_i32(self.kind(), table.rows, "vocabulary")?;
        let a = self.on("embed", || {
            let mut id = token.array.reshape(&[1])?;
            if shift != 0 {
                id = id
                    .add(Array::from_int(shift as i32))?
                    .remainder(Array::from_int(vocab))?;
            }
            table.array.take_axis(&id, 0)
        })?;
        Ok(self.out(a, 1, table.cols))
    }

    fn deferred_token(&self, token: &MlxTensor) -> Result<u32> {
        self.token_value(&token.array)
    }

    fn synchronize(&self) -> Result<()> {
        self.flush(None)?;
        // SAFETY: the stream handle is valid for the backend's lifetime;
        // mlx_synchronize only waits on it.
        let rc = unsafe { mlx_sys::mlx_synchronize(self.stream.as_ptr()) };
        if rc != 0 {
            return Err(Error::Backend {
                backend: self.kind(),
                problem: "synchronize: mlx_synchronize failed".into(),
            });
        }
        Ok(())
    }
}

impl MlxBackend {
    /// The fused path's q, k, v from its output arrays.
    fn fused_outputs(
        &self,
        outs: Vec<Array>,
        rows: usize,
        qd: usize,
        kd: usize,
    ) -> Result<(MlxTensor, MlxTensor, MlxTensor)> {
        let [q, k, v]: [Array; 3] = outs.try_into().map_err(|o: Vec<Array>| Error::Backend {
            backend: self.kind(),
            problem: format!("fused_qkv: {} output arrays, not 3", o.len()),
        })?;
        Ok((
            self.out(q, rows, qd),
            self.out(k, rows, kd),
            self.out(v, rows, kd),
        ))
    }

    /// A token index that `ops::greedy_token` computed, evaluated and read.
    fn token_value(&self, token: &Array) -> Result<u32> {
        let v = self.on("argmax", || {
            token.eval()?;
            token
                .try_item_exact::<i32>()
                .map_err(|e| Exception::custom(e.to_string()))
        })?;
        u32::try_from(v).map_err(|_| Error::Backend {
            backend: self.kind(),
            problem: format!("argmax: index {v} is negative"),
        })
    }

    /// Evaluates `a` and copies it out as f32 (exact for bf16 values).
    pub(super) fn host_f32(&self, a: &Array, op: &str) -> Result<Vec<f32>> {
        if a.size() == 0 {
            return Ok(Vec::new());
        }
        let wide = self.on(op, || a.as_dtype(Dtype::Float32)?.contiguous())?;
        let slice = wide.try_as_slice::<f32>().map_err(|e| Error::Backend {
            backend: self.kind(),
            problem: format!("{op}: {e}"),
        })?;
        Ok(slice.to_vec())
    }
}
