//! The KV cache and attention over it. A short decode context takes one
//! launch (attn_decode_bf16, the three passes' arithmetic bit for bit);
//! otherwise three launches over chunks of ATTN_CHUNK keys (scores,
//! exponentials, outputs), in row batches that bound the scratch. While
//! recording, attention covers the cache's whole capacity, because the
//! replayed step must be right at every later length.

use super::buffers::COUNTERS;
use super::launch::{cfg, shape, BLOCK};
use super::tensor::{CudaCache, CudaTensor};
use super::{CudaBackend, ReductionMode};
use crate::backend::AttnDims;
use crate::error::{Error, Result};
use cudarc::driver::LaunchConfig;

/// Keys per attention chunk (ATTN_CHUNK in attention.cu).
const ATTN_CHUNK: usize = 64;

/// Decode attention takes one launch (attn_decode_bf16) while a step covers
/// at most this many keys (with CUDA graphs: the cache's capacity); longer
/// contexts are split over the GPU in three launches.
const DECODE_ONE_LAUNCH_KEYS: usize = 2048;

/// Blocks per head of attn_decode_cluster_bf16 (ATTN_CLUSTER in
/// attention.cu); with ATTN_CLUSTER_SLOTS = 4 chunks of 64 keys each they
/// cover DECODE_ONE_LAUNCH_KEYS.
const ATTN_CLUSTER: u32 = 8;

/// A batched decode step takes one attention launch (attn_decode_batch_bf16)
/// while its longest sequence covers at most this many keys: the scores sit
/// in shared memory, 4 * (keys + keys / 32 + 1) bytes, under the 48 KiB a
/// launch gets without opting in. Longer steps go sequence by sequence.
const BATCH_ONE_LAUNCH_KEYS: usize = 8192;

/// Attention score scratch per launch; longer prefills go in row batches.
const ATTN_SCRATCH_BYTES: usize = 256 << 20;

impl CudaBackend {
    pub(super) fn new_cache(&self, dims: &AttnDims, capacity: usize) -> Result<CudaCache> {
        let kvd = dims.kv_dim();
        let alloc = |what: &str| {
            self.stream
                .alloc_zeros::<u16>((capacity * kvd).max(1))
                .map_err(|e| Error::Backend {
                    backend: crate::ident::BackendKind::Cuda,
                    problem: format!("allocating the {what} ({} bytes): {e}", 2 * capacity * kvd),
                })
        };
        Ok(CudaCache {
            len: 0,
            cap: capacity,
            kv_dim: kvd,
            k: alloc("key cache")?,
            v: alloc("value cache")?,
        })
    }

    pub(super) fn cache_append(
        &self,
        cache: &mut CudaCache,
        k: &CudaTensor,
        v: &CudaTensor,
    ) -> Result<()> {
        if k.cols != cache.kv_dim
            || v.cols != cache.kv_dim
            || k.rows != v.rows
            || cache.len + k.rows > cache.cap
        {
            return Err(shape(
                "cache_append",
                format!(
                    "{} rows into a cache of {}/{}",
                    k.rows, cache.len, cache.cap
                ),
            ));
        }
        let positions: Vec<usize> = (cache.len..cache.len + k.rows).collect();
        let pos = self.positions(&positions)?;
        let kvd = cache.kv_dim as i32;
        // SAFETY: positions are below the capacity (checked); k and v hold
        // k.rows rows of kv_dim.
        unsafe {
            self.launch(
                "cache_append_bf16",
                cfg((k.rows as u32, 1, 1)),
                &[&*k.data, &*v.data, &cache.k, &cache.v, &pos.ptr, &kvd],
            )
        }?;
        cache.len += k.rows;
        Ok(())
    }

    pub(super) fn attention(
        &self,
        q: &CudaTensor,
        cache: &CudaCache,
        dims: &AttnDims,
        positions: &[usize],
    ) -> Result<CudaTensor> {
        let len = positions.iter().max().map_or(0, |p| p + 1);
        let hd = dims.head_dim;
        if q.cols != dims.q_dim()
            || positions.len() != q.rows
            || len > cache.len
            || hd > BLOCK as usize
            || hd % 8 != 0
        {
            return Err(shape(
                "attention",
                format!(
                    "q {}x{}, cache {} rows, head_dim {hd} (a multiple of 8 up to {BLOCK})",
                    q.rows, q.cols, cache.len
                ),
            ));
        }
        let heads = dims.n_heads;
        let stride = cache.cap.max(1);
        // A recorded step replays at every later length, up to the capacity.
        let keys = if self.recording() { stride } else { len };
        // Both modes: the one-launch kernel has no cross-block combination
        // for atomics to reorder.
        if q.rows == 1 && keys <= DECODE_ONE_LAUNCH_KEYS {
            return self.attention_one_launch(q, cache, dims, positions, keys);
        }
        let max_chunks = stride.div_ceil(ATTN_CHUNK);
        // A recorded step must cover every later length; otherwise launch
        // only the chunks this call needs (the same results either way).
        let launch_chunks = if self.recording() {
            max_chunks
        } else {
            len.div_ceil(ATTN_CHUNK)
        };
        let pos = self.positions(positions)?;
        let out = self.tensor("attention output", q.rows, q.cols)?;
        let batch = (ATTN_SCRATCH_BYTES / (heads * stride * 4))
            .clamp(1, COUNTERS / heads)
            .min(q.rows);
        let fast = self.options().mode == ReductionMode::Fast;
        let s = self.buf(&self.pools.f32s, "attention scores", batch * heads * stride)?;
        let m = self.buf(
            &self.pools.f32s,
            "attention chunk maxima",
            batch * heads * max_chunks,
        )?;
        let z = self.buf(
            &self.pools.f32s,
            "attention chunk sums",
            batch * heads * max_chunks,
        )?;
        let p_len = if fast {
            1
        } else {
            batch * heads * max_chunks * hd
        };
        let p = self.buf(&self.pools.f32s, "attention partial outputs", p_len)?;
        let o = if fast {
            self.zeroed(batch * heads * hd)?
        } else {
            0
        };
        let counters = self.counters(batch * heads, "attention")?;
        let (nh, nkv, hdi, st, mc) = (
            heads as i32,
            dims.n_kv_heads as i32,
            hd as i32,
            stride as i32,
            max_chunks as i32,
        );
        let scale = (hd as f64).powf(-0.5) as f32;
        let atomic = fast as i32;
        let (qp, op) = (self.ptr(&q.data), self.ptr(&out.data));
        let (sp, mp, zp, pp) = (self.ptr(&s), self.ptr(&m), self.ptr(&z), self.ptr(&p));
        let mut r0 = 0;
        while r0 < q.rows {
            let rows = batch.min(q.rows - r0);
            let qr = qp + (2 * r0 * q.cols) as u64;
            let outr = op + (2 * r0 * q.cols) as u64;
            let posr = pos.ptr + (4 * r0) as u64;
            let grid = (rows as u32, heads as u32, launch_chunks as u32);
            let per_key = LaunchConfig {
                grid_dim: grid,
                block_dim: (ATTN_CHUNK as u32, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: rows x heads x chunks blocks of one thread per key;
            // scratch holds batch rows of heads x stride scores and max_chunks
            // maxima; positions are below the cache length (checked);
            // head_dim <= 256 and a multiple of 8 (16-byte key loads).
            unsafe {
                self.launch(
                    "attn_scores_bf16",
                    per_key,
                    &[
                        &qr, &cache.k, &sp, &mp, &posr, &nh, &nkv, &hdi, &st, &mc, &scale,
                    ],
                )
            }?;
            // SAFETY: the same grid over the same scratch.
            unsafe {
                self.launch(
                    "attn_exp_bf16",
                    per_key,
                    &[&sp, &mp, &zp, &posr, &nh, &st, &mc],
                )
            }?;
            // SAFETY: the same grid; P holds max_chunks partials per (row,
            // head) in deterministic mode, O heads x head_dim zeroed f32 per
            // row in fast mode; counters cover rows x heads; out holds q's shape.
            unsafe {
                self.launch(
                    "attn_out_bf16",
                    cfg(grid),
                    &[
                        &sp, &zp, &cache.v, &pp, &o, &outr, &counters, &posr, &nh, &nkv, &hdi, &st,
                        &mc, &atomic,
                    ],
                )
            }?;
            r0 += rows;
        }
        Ok(out)
    }

    /// A batched decode step's attention: each row's k and v appended to
    /// its own cache and its query attended over it, with the bits of
    /// `cache_append` then `attention` alone (the same device function as
    /// attn_decode_bf16, which equals the three-pass kernels). Two launches
    /// for the whole batch; a step too long for shared memory, or one being
    /// recorded, goes sequence by sequence.
    pub(super) fn attention_step(
        &self,
        q: &CudaTensor,
        k: &CudaTensor,
        v: &CudaTensor,
        caches: &mut [&mut CudaCache],
        dims: &AttnDims,
        positions: &[usize],
    ) -> Result<CudaTensor> {
        let b = caches.len();
        let hd = dims.head_dim;
        let kvd = dims.kv_dim();
        if q.rows != b
            || k.rows != b
            || v.rows != b
            || positions.len() != b
            || q.cols != dims.q_dim()
            || k.cols != kvd
            || v.cols != kvd
            || hd % 8 != 0
            || hd > BLOCK as usize
        {
            return Err(shape(
                "attention_step",
                format!(
                    "{b} caches, {} positions, q {}x{}, k {}x{}, v {}x{}, head_dim {hd}",
                    positions.len(),
                    q.rows,
                    q.cols,
                    k.rows,
                    k.cols,
                    v.rows,
                    v.cols
                ),
            ));
        }
        for (i, c) in caches.iter().enumerate() {
            if c.kv_dim != kvd || c.len != positions[i] || c.len >= c.cap {
                return Err(shape(
                    "attention_step",
                    format!(
                        "sequence {i} at position {} into a cache of {}/{}",
                        positions[i], c.len, c.cap
                    ),
                ));
            }
        }
        let keys = positions.iter().max().map_or(0, |p| p + 1);
        if self.recording() || keys > BATCH_ONE_LAUNCH_KEYS {
            return crate::backend::attention_each(self, q, k, v, caches, dims, positions);
        }
        let mut table: Vec<u64> = caches.iter().map(|c| self.ptr(&c.k)).collect();
        table.extend(caches.iter().map(|c| self.ptr(&c.v)));
        let table = self.ints(&self.pools.u64s, "batch cache table", &table, None)?;
        let pos = self.positions(positions)?;
        let (bi, kvi) = (b as i32, kvd as i32);
        // SAFETY: one block per sequence; the table holds b key and b value
        // cache addresses, each cache has room at its position (checked).
        unsafe {
            self.launch(
                "cache_append_batch_bf16",
                cfg((b as u32, 1, 1)),
                &[&*k.data, &*v.data, &table.ptr, &pos.ptr, &bi, &kvi],
            )
        }?;
        for c in caches.iter_mut() {
            c.len += 1;
        }
        let out = self.tensor("attention output", b, q.cols)?;
        let (nh, nkv, hdi, st) = (
            dims.n_heads as i32,
            dims.n_kv_heads as i32,
            hd as i32,
            keys as i32,
        );
        let scale = (hd as f64).powf(-0.5) as f32;
        let grid = LaunchConfig {
            grid_dim: (dims.n_heads as u32, b as u32, 1),
            block_dim: (512, 1, 1),
            shared_mem_bytes: (4 * (keys + keys / 32 + 1)) as u32,
        };
        // SAFETY: block (h, r) attends row r's query over its cache's first
        // positions[r] + 1 rows (all written); shared memory holds `keys`
        // scores and keys / 32 + 1 half-chunk sums (keys <=
        // BATCH_ONE_LAUNCH_KEYS keeps it under 48 KiB); head_dim is a
        // multiple of 8 up to 256 (checked).
        unsafe {
            self.launch(
                "attn_decode_batch_bf16",
                grid,
                &[
                    &*q.data, &table.ptr, &*out.data, &pos.ptr, &bi, &nh, &nkv, &hdi, &st, &scale,
                ],
            )
        }?;
        Ok(out)
    }

    /// Decode attention in one launch (attn_decode_bf16): the three passes'
    /// arithmetic in one block per head, bit for bit, for short caches.
    fn attention_one_launch(
        &self,
        q: &CudaTensor,
        cache: &CudaCache,
        dims: &AttnDims,
        positions: &[usize],
        keys: usize,
    ) -> Result<CudaTensor> {
        let pos = self.positions(positions)?;
        let out = self.tensor("attention output", 1, q.cols)?;
        let (nh, nkv, hdi, st) = (
            dims.n_heads as i32,
            dims.n_kv_heads as i32,
            dims.head_dim as i32,
            keys as i32,
        );
        let scale = (dims.head_dim as f64).powf(-0.5) as f32;
        if self.attn_cluster {
            let grid = LaunchConfig {
                grid_dim: (ATTN_CLUSTER, dims.n_heads as u32, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: one cluster of ATTN_CLUSTER blocks per head (the
            // kernel's __cluster_dims__), each taking at most
            // ATTN_CLUSTER_SLOTS chunks of 64 keys: 2048 keys, which
            // DECODE_ONE_LAUNCH_KEYS bounds `keys` by; the step attends to
            // at most `keys` positions (below the cache length, checked by
            // the caller); head_dim is a multiple of 8 up to 256 (checked by
            // the caller).
            unsafe {
                self.launch(
                    "attn_decode_cluster_bf16",
                    grid,
                    &[
                        &*q.data, &cache.k, &cache.v, &*out.data, &pos.ptr, &nh, &nkv, &hdi, &scale,
                    ],
                )
            }?;
            return Ok(out);
        }
        let grid = LaunchConfig {
            grid_dim: (dims.n_heads as u32, 1, 1),
            block_dim: (512, 1, 1),
            shared_mem_bytes: (4 * (keys + keys / 32 + 1)) as u32,
        };
        // SAFETY: one block per head; shared memory holds `keys` scores and
        // keys / 32 + 1 half-chunk sums (keys <= DECODE_ONE_LAUNCH_KEYS keeps
        // it under the 48 KiB default), and the step attends to at most
        // `keys` positions (below the cache length, checked by the caller);
        // head_dim is a multiple of 8 up to 256 (checked by the caller).
        unsafe {
            self.launch(
                "attn_decode_bf16",
                grid,
                &[
                    &*q.data, &cache.k, &cache.v, &*out.data, &pos.ptr, &nh, &nkv, &hdi, &st,
                    &scale,
                ],
            )
        }?;
        Ok(out)
    }
}
