//! Query, key and value before attention: rope on its own, and the fused
//! kernel that projects, normalises and rotates in one launch and, on the
//! decode path, writes k and v straight into the cache. The fused kernel
//! adds in a fixed order in both reduction modes (no atomics); which
//! variant runs (one row, row pairs, several rows) and how rows are split
//! follow the shape, the mode and the GPU's wave size, never the run.

use super::launch::{cfg, grid_for, shape, BLOCK, ROWS_PER_PASS};
use super::linear::TcProduct;
use super::tensor::{CudaCache, CudaTensor, CudaWeight};
use super::CudaBackend;
use crate::backend::{check, AttnDims};
use crate::error::Result;

impl CudaBackend {
    pub(super) fn rope(
        &self,
        x: &CudaTensor,
        positions: &[usize],
        head_dim: usize,
        theta: f64,
    ) -> Result<CudaTensor> {
        check::rope((x.rows, x.cols), positions.len(), head_dim)?;
        let pos = self.positions(positions)?;
        let out = self.tensor("rope output", x.rows, x.cols)?;
        let total = x.rows * x.cols / 2;
        let (rows, width, hd, th) = (x.rows as i32, x.cols as i32, head_dim as i32, theta as f32);
        // SAFETY: one thread per rotated pair, guarded against the total.
        unsafe {
            self.launch(
                "rope_bf16",
                cfg((grid_for(total), 1, 1)),
                &[&*x.data, &*out.data, &pos.ptr, &rows, &width, &hd, &th],
            )
        }?;
        Ok(out)
    }

    /// The fused kernel; k and v go to `k_out`/`v_out` (pointers, 0 for
    /// none) and, with a cache, into it at the rows' positions.
    #[allow(clippy::too_many_arguments)]
    fn launch_fused(
        &self,
        x: &CudaTensor,
        qkv: &CudaWeight,
        q_norm: &CudaWeight,
        k_norm: &CudaWeight,
        dims: &AttnDims,
        positions: &[usize],
        q: &mut CudaTensor,
        k_out: u64,
        v_out: u64,
        cache: Option<&CudaCache>,
    ) -> Result<()> {
        let hd = dims.head_dim;
        check::fused_qkv(
            (x.rows, x.cols),
            (qkv.rows, qkv.cols),
            dims,
            positions.len(),
        )?;
        if hd % 8 != 0 || hd > BLOCK as usize || x.cols % 8 != 0 {
            return Err(shape(
                "fused_qkv",
                format!(
                    "packed {}x{}, input {}x{}, head_dim {hd}: the kernel needs head_dim a multiple of 8 up to {BLOCK} and hidden a multiple of 8",
                    qkv.rows, qkv.cols, x.rows, x.cols
                ),
            ));
        }
        let slots = dims.n_heads + 2 * dims.n_kv_heads;
        let pos = self.positions(positions)?;
        let (kc, vc) = match cache {
            Some(c) => (self.ptr(&c.k), self.ptr(&c.v)),
            None => (0u64, 0u64),
        };
        if self.tensor_core_products(x.cols) {
            let outs = [self.ptr(&q.data), k_out, v_out, kc, vc];
            return self.fused_tc(x, qkv, (q_norm, k_norm), dims, pos.ptr, outs);
        }
        let groups = x.rows.div_ceil(ROWS_PER_PASS);
        let counters = self.counters(groups * slots, "fused_qkv")?;
        let raw = self.buf(&self.pools.f32s, "fused projections", x.rows * qkv.rows)?;
        let parts = self.parts(qkv.rows, x.cols).min(8);
        let (n, hidden, nh, nkv, hdi, pi) = (
            x.rows as i32,
            x.cols as i32,
            dims.n_heads as i32,
            dims.n_kv_heads as i32,
            hd as i32,
            parts as i32,
        );
        let (eps, theta) = (dims.eps as f32, dims.rope_theta as f32);
        // A decode step whose one-row grid would not fit on the GPU at once
        // (qwen3-8b: 768 blocks, 660 resident on an H100) takes two rows per
        // warp group, where a block's 16 / parts rows divide head_dim: the
        // same sums in one wave. Smaller grids keep one row per warp group,
        // which has twice the warps in flight (qwen3-0.6b on the H100: 2.2%
        // slower with pairs).
        let one_row_blocks = qkv.rows / (8 / parts);
        let pairs = hd % (16 / parts) == 0 && one_row_blocks > self.qkv1_wave;
        let (name, rows_per_block) = match x.rows {
            1 if pairs => ("qkv_fused1_pairs_bf16", 16 / parts),
            1 => ("qkv_fused1_bf16", 8 / parts),
            _ => ("qkv_fused_bf16", 8 / parts),
        };
        let grid = ((qkv.rows / rows_per_block) as u32, groups as u32, 1);
        // SAFETY: the packed weight has slots * head_dim rows of hidden
        // (checked), head_dim is a multiple of rows_per_block so every block
        // lies in one slot; outputs and the cache hold the rows' elements (positions
        // below the cache capacity: checked by the caller); counters cover
        // groups * slots.
        unsafe {
            self.launch(
                name,
                cfg(grid),
                &[
                    &*x.data,
                    &qkv.data,
                    &q_norm.data,
                    &k_norm.data,
                    &*q.data,
                    &k_out,
                    &v_out,
                    &kc,
                    &vc,
                    &pos.ptr,
                    &*raw,
                    &counters,
                    &n,
                    &hidden,
                    &nh,
                    &nkv,
                    &hdi,
                    &pi,
                    &eps,
                    &theta,
                ],
            )
        }?;
        Ok(())
    }

    /// The fused op with tensor-core products, in two launches: the
    /// packed projection on tensor cores, left in f32 (its per-output
    /// order fixed by the shape, as every tensor-core product's), then
    /// qkv_fused.cu's phase 2 per (head slot, token) on those sums. One
    /// kernel would need the projection's blocks to finish the head slots,
    /// which the tile kernels' grids do not line up with; the numerics
    /// are the one-kernel form's (f32 sums, per-head norm and RoPE on
    /// them, one rounding).
    ///
    /// `outs`: the device addresses of q, k, v (0: not written) and of the
    /// key and value caches (0: none), as the one-kernel form takes them.
    fn fused_tc(
        &self,
        x: &CudaTensor,
        qkv: &CudaWeight,
        (q_norm, k_norm): (&CudaWeight, &CudaWeight),
        dims: &AttnDims,
        pos: u64,
        outs: [u64; 5],
    ) -> Result<()> {
        let raw = self.buf(&self.pools.f32s, "fused projections", x.rows * qkv.rows)?;
        self.gemm_tc(x, qkv, TcProduct::Unrounded, self.ptr(&*raw))?;
        let [q, k, v, kc, vc] = outs;
        let slots = dims.n_heads + 2 * dims.n_kv_heads;
        let (nh, nkv, hdi) = (
            dims.n_heads as i32,
            dims.n_kv_heads as i32,
            dims.head_dim as i32,
        );
        let (eps, theta) = (dims.eps as f32, dims.rope_theta as f32);
        let (Ok(sx), Ok(ty)) = (u32::try_from(slots), u32::try_from(x.rows)) else {
            return Err(shape(
                "fused_qkv",
                format!("{} rows: too many blocks", x.rows),
            ));
        };
        // SAFETY: raw holds x.rows x packed rows f32 sums (written above on
        // this stream); one block per (head slot, token), head_dim <= BLOCK
        // (checked by the caller); outputs and the cache hold every row's
        // elements at its position.
        unsafe {
            self.launch(
                "qkv_finish_bf16",
                cfg((sx, ty, 1)),
                &[
                    &*raw,
                    &q_norm.data,
                    &k_norm.data,
                    &q,
                    &k,
                    &v,
                    &kc,
                    &vc,
                    &pos,
                    &nh,
                    &nkv,
                    &hdi,
                    &eps,
                    &theta,
                ],
            )
        }
    }

    pub(super) fn fused_qkv(
        &self,
        x: &CudaTensor,
        qkv: &CudaWeight,
        q_norm: &CudaWeight,
        k_norm: &CudaWeight,
        dims: &AttnDims,
        positions: &[usize],
    ) -> Result<(CudaTensor, CudaTensor, CudaTensor)> {
        let mut q = self.tensor("fused q", x.rows, dims.q_dim())?;
        let k = self.tensor("fused k", x.rows, dims.kv_dim())?;
        let v = self.tensor("fused v", x.rows, dims.kv_dim())?;
        let (kp, vp) = (self.ptr(&k.data), self.ptr(&v.data));
        self.launch_fused(
            x, qkv, q_norm, k_norm, dims, positions, &mut q, kp, vp, None,
        )?;
        Ok((q, k, v))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn fused_qkv_append(
        &self,
        x: &CudaTensor,
        qkv: &CudaWeight,
        q_norm: &CudaWeight,
        k_norm: &CudaWeight,
        dims: &AttnDims,
        positions: &[usize],
        cache: &mut CudaCache,
    ) -> Result<CudaTensor> {
        if cache.kv_dim != dims.kv_dim()
            || positions.iter().any(|&p| p >= cache.cap)
            || positions.first() != Some(&cache.len)
        {
            return Err(shape(
                "fused_qkv_append",
                format!(
                    "{} rows at positions {:?}.. into a cache of {}/{}",
                    x.rows,
                    positions.first(),
                    cache.len,
                    cache.cap
                ),
            ));
        }
        let mut q = self.tensor("fused q", x.rows, dims.q_dim())?;
        self.launch_fused(
            x,
            qkv,
            q_norm,
            k_norm,
            dims,
            positions,
            &mut q,
            0,
            0,
            Some(cache),
        )?;
        cache.len += x.rows;
        Ok(q)
    }
}
