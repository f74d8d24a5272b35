//! The ops without a weight product, row by row or element by element:
//! embedding lookup, RMS norm (alone and fused with the residual add), the
//! elementwise add and SwiGLU, and argmax over the last row. A norm's sums
//! follow the kernels' NORM_THREADS order whatever the block width
//! (`per_group`), so results do not depend on the width chosen.

use super::launch::{cfg, err, grid_for, per_group};
use super::tensor::{CudaTensor, CudaWeight};
use super::CudaBackend;
use crate::backend::{check, Backend};
use crate::error::{Error, Result};
use cudarc::driver::LaunchConfig;

impl CudaBackend {
    pub(super) fn elementwise(
        &self,
        name: &'static str,
        a: &CudaTensor,
        b: &CudaTensor,
    ) -> Result<CudaTensor> {
        check::same_shape(name, (a.rows, a.cols), (b.rows, b.cols))?;
        let n = a.rows * a.cols;
        let out = self.tensor(name, a.rows, a.cols)?;
        // SAFETY: a, b and out hold n elements; one thread per element, guarded by i < n.
        unsafe {
            self.launch(
                name,
                cfg((grid_for(n), 1, 1)),
                &[&*a.data, &*b.data, &*out.data, &n],
            )
        }?;
        Ok(out)
    }

    pub(super) fn embed(&self, table: &CudaWeight, ids: &[u32]) -> Result<CudaTensor> {
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= table.rows) {
            return Err(Error::Prompt(format!(
                "token id {bad} is outside the vocabulary (size {})",
                table.rows
            )));
        }
        let staged = match self.staged() {
            Some((t, _)) if ids == [t] => Some(self.step_ptrs.0),
            _ => None,
        };
        let dids = self.ints(&self.pools.u32s, "token ids", ids, staged)?;
        let hidden = table.cols as i32;
        let out = self.tensor("embedding output", ids.len(), table.cols)?;
        // SAFETY: every id was checked against the table's rows (the staged
        // one when it was staged); out holds ids.len() rows.
        unsafe {
            self.launch(
                "embed_bf16",
                cfg((ids.len() as u32, 1, 1)),
                &[&table.data, &dids.ptr, &*out.data, &hidden],
            )
        }?;
        Ok(out)
    }

    pub(super) fn rms_norm(&self, x: &CudaTensor, w: &CudaWeight, eps: f64) -> Result<CudaTensor> {
        let width = w.rows * w.cols;
        check::rms_norm(x.cols, width)?;
        let groups = x.rows * x.cols / width;
        let out = self.tensor("rms_norm output", x.rows, x.cols)?;
        let (wi, e) = (width as i32, eps as f32);
        // SAFETY: groups * width elements in x and out; w holds width elements.
        unsafe {
            self.launch(
                "rms_norm_bf16",
                per_group(groups, width),
                &[&*x.data, &w.data, &*out.data, &wi, &e],
            )
        }?;
        Ok(out)
    }

    pub(super) fn add_rms_norm(
        &self,
        x: &CudaTensor,
        r: &CudaTensor,
        w: &CudaWeight,
        eps: f64,
    ) -> Result<(CudaTensor, CudaTensor)> {
        check::same_shape("add_rms_norm", (x.rows, x.cols), (r.rows, r.cols))?;
        let width = w.rows * w.cols;
        check::rms_norm(x.cols, width)?;
        let groups = x.rows * x.cols / width;
        let sum = self.tensor("residual sum", x.rows, x.cols)?;
        let out = self.tensor("rms_norm output", x.rows, x.cols)?;
        let (wi, e) = (width as i32, eps as f32);
        // SAFETY: x, r, sum and out hold groups * width elements; w holds width.
        unsafe {
            self.launch(
                "add_rms_norm_bf16",
                per_group(groups, width),
                &[&*x.data, &*r.data, &w.data, &*sum.data, &*out.data, &wi, &e],
            )
        }?;
        Ok((sum, out))
    }

    pub(super) fn argmax(&self, logits: &CudaTensor) -> Result<u32> {
        self.no_host_transfer("argmax")?;
        let out = self.buf(&self.pools.u32s, "argmax", 1)?;
        let last = self.ptr(&logits.data) + (2 * (logits.rows - 1) * logits.cols) as u64;
        let n = logits.cols as i32;
        // A block of 1024 per SM at most, each with at least 1024 values.
        let blocks = logits.cols.div_ceil(1024).clamp(1, self.sms.min(1024));
        let part_v = self.buf(&self.pools.f32s, "argmax block values", blocks)?;
        let part_i = self.buf(&self.pools.i32s, "argmax block indices", blocks)?;
        let counter = self.counters(1, "argmax")?;
        let grid = LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (1024, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the last row holds n values; part_v / part_i hold one
        // entry per block (<= 1024, the final block's threads); out holds
        // one u32; counter 0 is zero between launches.
        unsafe {
            self.launch(
                "argmax_bf16",
                grid,
                &[&last, &n, &*part_v, &*part_i, &counter, &*out],
            )
        }?;
        let mut host = [0u32];
        self.stream
            .memcpy_dtoh(&*out, &mut host)
            .map_err(err("argmax to host"))?;
        self.synchronize()?;
        Ok(host[0])
    }

    /// The greedy token of every row (argmax_rows_bf16: one block per row,
    /// the same choice as `argmax`), read back in one copy.
    pub(super) fn argmax_rows(&self, logits: &CudaTensor) -> Result<Vec<u32>> {
        self.no_host_transfer("argmax")?;
        let rows = logits.rows;
        let out = self.buf(&self.pools.u32s, "argmax rows", rows.max(1))?;
        let n = logits.cols as i32;
        let grid = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (1024, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: one block per row of n values; out holds one u32 per row.
        unsafe { self.launch("argmax_rows_bf16", grid, &[&*logits.data, &n, &*out]) }?;
        let mut host = vec![0u32; rows.max(1)];
        self.stream
            .memcpy_dtoh(&*out, &mut host)
            .map_err(err("argmax rows to host"))?;
        self.synchronize()?;
        host.truncate(rows);
        Ok(host)
    }
}
