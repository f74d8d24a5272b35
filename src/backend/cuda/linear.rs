//! Products with a weight. Decode products (up to ROWS_PER_PASS rows) use
//! our GEMV kernels, larger ones cuBLAS when it loaded, except while
//! recording, since a recorded step uses our kernels only, and in a
//! deterministic batched decode step, whose rows must keep their bits
//! alone (gemv_many_bf16). How a row's dot
//! product is split over warps (`parts`) depends on the shape, the mode and
//! the GPU's SM count alone, so the summation order is fixed for a shape on
//! a GPU; fast mode adds the parts with atomics. With tensor-core products
//! (deterministic mode) every product our GEMVs would take goes to
//! linear_tc.cu instead, whatever its row count.

use super::launch::{cfg, grid_for, shape, BLOCK, ROWS_PER_PASS};
use super::tensor::{CudaTensor, CudaWeight};
use super::{CudaBackend, Products, ReductionMode};
use crate::backend::{check, Backend};
use crate::error::{Error, Result};
use cudarc::cublas::{sys as blas_sys, CudaBlas};
use cudarc::driver::{DevicePtr, DevicePtrMut};

/// What a tensor-core product computes.
#[derive(Clone, Copy)]
pub(super) enum TcProduct<'a> {
    /// y = bf16(x w^T).
    Rounded,
    /// The MLP input: w is the gate, this the up projection.
    GateUp(&'a CudaWeight),
    /// x w^T left in f32.
    Unrounded,
}

impl TcProduct<'_> {
    /// The row of TC_PLAIN and TC_STAGED that holds this product's kernels.
    fn index(self) -> usize {
        match self {
            TcProduct::Rounded => 0,
            TcProduct::GateUp(_) => 1,
            TcProduct::Unrounded => 2,
        }
    }
}

/// linear_tc.cu's per-warp entry points by product and batch tiles (1, 2,
/// 4, 8): static names, so a launch builds no string. The two-weight pass
/// has no 8-tile form.
const TC_PLAIN: [[&str; 4]; 3] = [
    [
        "gemm_tc1_bf16",
        "gemm_tc2_bf16",
        "gemm_tc4_bf16",
        "gemm_tc8_bf16",
    ],
    [
        "gate_up_tc1_bf16",
        "gate_up_tc2_bf16",
        "gate_up_tc4_bf16",
        "",
    ],
    [
        "gemm_tc1_f32",
        "gemm_tc2_f32",
        "gemm_tc4_f32",
        "gemm_tc8_f32",
    ],
];

/// linear_tc.cu's staged entry points by product, batch tiles (4, 8) and
/// k-shares (1, 2, 4, 8).
const TC_STAGED: [[[&str; 4]; 2]; 3] = [
    [
        [
            "gemm_tcs4_p1_bf16",
            "gemm_tcs4_p2_bf16",
            "gemm_tcs4_p4_bf16",
            "gemm_tcs4_p8_bf16",
        ],
        [
            "gemm_tcs8_p1_bf16",
            "gemm_tcs8_p2_bf16",
            "gemm_tcs8_p4_bf16",
            "gemm_tcs8_p8_bf16",
        ],
    ],
    [
        [
            "gate_up_tcs4_p1_bf16",
            "gate_up_tcs4_p2_bf16",
            "gate_up_tcs4_p4_bf16",
            "gate_up_tcs4_p8_bf16",
        ],
        [
            "gate_up_tcs8_p1_bf16",
            "gate_up_tcs8_p2_bf16",
            "gate_up_tcs8_p4_bf16",
            "gate_up_tcs8_p8_bf16",
        ],
    ],
    [
        [
            "gemm_tcs4_p1_f32",
            "gemm_tcs4_p2_f32",
            "gemm_tcs4_p4_f32",
            "gemm_tcs4_p8_f32",
        ],
        [
            "gemm_tcs8_p1_f32",
            "gemm_tcs8_p2_f32",
            "gemm_tcs8_p4_f32",
            "gemm_tcs8_p8_f32",
        ],
    ],
];

/// Weight rows per warp group in gemv_many_bf16 (MANY_NW in linear.cu).
const MANY_WEIGHT_ROWS: usize = 4;

impl CudaBackend {
    /// Warps per output row. Each lane keeps a group of 16-byte loads in
    /// flight (warp_dot in common.cuh), so a product needs about one block
    /// of 8 warps per SM: rows are split only while there are fewer warps
    /// than that, and only while each lane keeps at least two chunks. The
    /// split fixes the summation order, so it depends on the shape alone.
    /// Fast mode splits at least four ways, combined with atomics.
    pub(super) fn parts(&self, m: usize, k: usize) -> usize {
        let chunks = k / 8;
        let mut p = 1;
        while p < 8 && m * p < self.sms * 8 && chunks >= 64 * p {
            p *= 2;
        }
        match self.options().mode {
            ReductionMode::Deterministic => p,
            ReductionMode::Fast => p.max(4),
        }
    }

    /// Contiguous shares of the k / 32 input chunks per 16-row weight tile
    /// in linear_tc.cu: split while there are fewer warps than about 16 per
    /// SM and each share keeps at least 8 chunks. The shape and the SM
    /// count fix it, and with it a product's summation order; the row count
    /// never enters.
    fn tc_parts(&self, m: usize, k: usize) -> usize {
        let (tiles, chunks) = (m.div_ceil(16), k / 32);
        let mut p = 1;
        while p < 8 && tiles * p < self.sms * 16 && chunks >= 16 * p {
            p *= 2;
        }
        p
    }

    /// Whether `k`-input products go to the tensor-core kernel.
    pub(super) fn tensor_core_products(&self, k: usize) -> bool {
        self.options().products == Products::TensorCores && k % 32 == 0
    }

    /// `gemm_tc` for many rows on Hopper: the cluster kernels, whose
    /// blocks stage activations in shared memory for 8 weight tiles of one
    /// share; the same per-output order, so the same bits.
    fn gemm_tc_staged(
        &self,
        x: &CudaTensor,
        w: &CudaWeight,
        product: TcProduct<'_>,
        out: u64,
        parts: usize,
    ) -> Result<()> {
        let (n, k, m) = (x.rows, x.cols, w.rows);
        let tiles = if n <= 32 { 4 } else { 8 };
        let name =
            TC_STAGED[product.index()][usize::from(tiles == 8)][parts.trailing_zeros() as usize];
        let groups = n.div_ceil(8 * tiles);
        let (Ok(bx), Ok(bz)) = (u32::try_from(m.div_ceil(128)), u32::try_from(groups)) else {
            return Err(shape(
                "linear",
                format!("{n} rows by {} ({m}x{k}): too many blocks", w.name),
            ));
        };
        let (ni, ki, mi) = (n as i32, k as i32, m as i32);
        let grid = cfg((bx, parts as u32, bz));
        // SAFETY: as gemm_tc; the grid's y is the cluster's (1, parts, 1)
        // (parts is 1, 2, 4 or 8, tc_parts), z the row groups.
        unsafe {
            match product {
                TcProduct::GateUp(u) => self.launch(
                    name,
                    grid,
                    &[&*x.data, &w.data, &u.data, &out, &ni, &ki, &mi],
                ),
                _ => self.launch(name, grid, &[&*x.data, &w.data, &out, &ni, &ki, &mi]),
            }
        }
    }

    /// x w^T on tensor cores into `out` (n x m, bf16 or, unrounded, f32),
    /// or the MLP input bf16(silu(x gate^T)) * x up^T with `w` the gate
    /// (one pass over both).
    pub(super) fn gemm_tc(
        &self,
        x: &CudaTensor,
        w: &CudaWeight,
        product: TcProduct<'_>,
        out: u64,
    ) -> Result<()> {
        let (n, k, m) = (x.rows, x.cols, w.rows);
        let parts = self.tc_parts(m, k);
        // The staged kernels only where they measured faster (an H200,
        // docs/benchmark_results/batched-decode-nvidia-h200.md): past 32
        // rows, with shares of at least 16 chunks (qwen3-8b's products; at
        // qwen3-0.6b's shares of 8 to 12 chunks the staging barriers cost
        // more than the activation traffic they save). Either kernel gives
        // the same bits.
        if n > 32 && (k / 32).div_ceil(parts) >= 16 && self.tc_staged {
            return self.gemm_tc_staged(x, w, product, out, parts);
        }
        // Batch tiles of 8 rows per block: as few as cover the rows, at
        // most 8 (4 for the two-weight pass); which kernel runs changes no
        // row's order.
        let tiles: usize = match (n.div_ceil(8), product) {
            (1, _) => 1,
            (2, _) => 2,
            (_, TcProduct::GateUp(_)) => 4,
            (3 | 4, _) => 4,
            _ => 8,
        };
        let name = TC_PLAIN[product.index()][tiles.trailing_zeros() as usize];
        let blocks = m.div_ceil(16 * 8 / parts);
        let groups = n.div_ceil(8 * tiles);
        let (Ok(bx), Ok(by)) = (u32::try_from(blocks), u32::try_from(groups)) else {
            return Err(shape(
                "linear",
                format!("{n} rows by {} ({m}x{k}): too many blocks", w.name),
            ));
        };
        let (ni, ki, mi, pi) = (n as i32, k as i32, m as i32, parts as i32);
        // SAFETY: x is n x k, w (and up, checked the same shape by the
        // caller) m x k, out n x m of the product's element type, k % 32 ==
        // 0 (16-byte loads of 32-input chunks; cudarc allocations are
        // 256-byte aligned); the grid covers m in tiles of 16 and n in
        // groups of 8 * tiles; rows past m or n are read clamped and never
        // written.
        unsafe {
            match product {
                TcProduct::GateUp(u) => self.launch(
                    name,
                    cfg((bx, by, 1)),
                    &[&*x.data, &w.data, &u.data, &out, &ni, &ki, &mi, &pi],
                ),
                _ => self.launch(
                    name,
                    cfg((bx, by, 1)),
                    &[&*x.data, &w.data, &out, &ni, &ki, &mi, &pi],
                ),
            }
        }
    }

    fn gemv(&self, x: &CudaTensor, w: &CudaWeight, out: &mut CudaTensor) -> Result<()> {
        let (n, k, m) = (x.rows, x.cols, w.rows);
        if self.tensor_core_products(k) {
            let ptr = self.ptr(&out.data);
            return self.gemm_tc(x, w, TcProduct::Rounded, ptr);
        }
        let parts = self.parts(m, k);
        let grid = (
            m.div_ceil(8 / parts) as u32,
            n.div_ceil(ROWS_PER_PASS) as u32,
            1,
        );
        let (ni, ki, mi, pi) = (n as i32, k as i32, m as i32, parts as i32);
        if self.options().mode == ReductionMode::Deterministic && n > ROWS_PER_PASS {
            // Row groups fastest in a one-dimensional grid, so the groups
            // that read the same weight rows run side by side.
            let blocks = m.div_ceil(MANY_WEIGHT_ROWS * 8 / parts) * n.div_ceil(ROWS_PER_PASS);
            let blocks = u32::try_from(blocks).map_err(|_| {
                shape(
                    "linear",
                    format!(
                        "{n} rows by {} ({m}x{k}): too many blocks for one launch",
                        w.name
                    ),
                )
            })?;
            // SAFETY: as gemv_bf16; block b takes row group b % groups of
            // weight block b / groups, and the grid covers both exactly.
            unsafe {
                self.launch(
                    "gemv_many_bf16",
                    cfg((blocks, 1, 1)),
                    &[&*x.data, &w.data, &*out.data, &ni, &ki, &mi, &pi],
                )
            }?;
            return Ok(());
        }
        // One row: both modes take one launch and differ only in how a row's
        // parts are added (warp order, or shared-memory atomics). Deterministic
        // mode adds the parts of 2-8 rows in warp order too.
        let one_launch = match (self.options().mode, n) {
            (ReductionMode::Deterministic, 1) => Some("gemv1_bf16"),
            (ReductionMode::Fast, 1) => Some("gemv1_fast_bf16"),
            (ReductionMode::Deterministic, _) => Some("gemv_bf16"),
            (ReductionMode::Fast, _) => None,
        };
        if let Some(name) = one_launch {
            // SAFETY: x is n x k, w m x k, out n x m, k % 8 == 0 (16-byte
            // loads; cudarc allocations are 256-byte aligned); warps past m
            // and rows past n do nothing.
            unsafe {
                self.launch(
                    name,
                    cfg(grid),
                    &[&*x.data, &w.data, &*out.data, &ni, &ki, &mi, &pi],
                )
            }?;
            return Ok(());
        }
        // Fast mode, 2-8 rows: f32 atomics into a zeroed accumulator, then a
        // rounding launch.
        let acc = self.zeroed(n * m)?;
        // SAFETY: as gemv_bf16; acc holds n * m zeroed f32.
        unsafe {
            self.launch(
                "gemv_atomic_bf16",
                cfg(grid),
                &[&*x.data, &w.data, &acc, &ni, &ki, &mi, &pi],
            )
        }?;
        let total = n * m;
        // SAFETY: one thread per element of acc and out, guarded.
        unsafe {
            self.launch(
                "f32_to_bf16_reset",
                cfg((grid_for(total), 1, 1)),
                &[&acc, &*out.data, &total],
            )
        }?;
        Ok(())
    }

    fn gemm_blas(
        &self,
        blas: &CudaBlas,
        x: &CudaTensor,
        w: &CudaWeight,
        out: &mut CudaTensor,
    ) -> Result<()> {
        use blas_sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};
        let (n, k, m) = (x.rows as i32, x.cols as i32, w.rows as i32);
        let (alpha, beta) = (1.0f32, 0.0f32);
        let a = w.data.device_ptr(&self.stream).0;
        let b = x.data.device_ptr(&self.stream).0;
        let c = out.data.device_ptr_mut(&self.stream).0;
        // Column-major view: out^T (m x n) = w (k x m)^T . x^T (k x n).
        // SAFETY: w is m x k, x n x k, out n x m, all bf16 on this stream.
        unsafe {
            cudarc::cublas::result::gemm_ex(
                *blas.handle(),
                cublasOperation_t::CUBLAS_OP_T,
                cublasOperation_t::CUBLAS_OP_N,
                m,
                n,
                k,
                &alpha as *const f32 as *const _,
                a as *const _,
                cudaDataType::CUDA_R_16BF,
                k,
                b as *const _,
                cudaDataType::CUDA_R_16BF,
                k,
                &beta as *const f32 as *const _,
                c as *mut _,
                cudaDataType::CUDA_R_16BF,
                m,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| Error::Backend {
            backend: crate::ident::BackendKind::Cuda,
            problem: format!("cublasGemmEx for {} ({n}x{k} by {m}x{k}): {e:?}", w.name),
        })?;
        // One call, counted as one launch (cuBLAS may run more kernels).
        self.count_launch();
        Ok(())
    }

    /// A batched decode step in deterministic mode: every row's product
    /// must have its bits alone, so our GEMV takes any row count. Fast mode
    /// promises no batch invariance and keeps cuBLAS.
    pub(super) fn rows_alone(&self) -> bool {
        self.options().mode == ReductionMode::Deterministic
            && self
                .in_batch_step
                .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(super) fn linear(&self, x: &CudaTensor, w: &CudaWeight) -> Result<CudaTensor> {
        check::linear((x.rows, x.cols), &w.name, (w.rows, w.cols))?;
        let mut out = self.tensor("linear output", x.rows, w.rows)?;
        if x.cols % 8 == 0 {
            match &self.blas {
                Some(blas) if x.rows > ROWS_PER_PASS && !self.recording() && !self.rows_alone() => {
                    self.gemm_blas(blas, x, w, &mut out)?
                }
                _ => self.gemv(x, w, &mut out)?,
            }
            return Ok(out);
        }
        let (n, k, m) = (x.rows as i32, x.cols as i32, w.rows as i32);
        let warps = BLOCK / 32;
        // SAFETY: x is n x k, w is m x k, out n x m; warps past m return early.
        unsafe {
            self.launch(
                "linear_bf16",
                cfg(((w.rows as u32).div_ceil(warps), 1, 1)),
                &[&*x.data, &w.data, &*out.data, &n, &k, &m],
            )
        }?;
        Ok(out)
    }

    pub(super) fn gate_up_swiglu(
        &self,
        x: &CudaTensor,
        gate: &CudaWeight,
        up: &CudaWeight,
    ) -> Result<CudaTensor> {
        let same = (gate.rows, gate.cols) == (up.rows, up.cols);
        // Tensor-core products take gate and up in one pass wherever our
        // kernels take the products (as `linear` decides), any row count.
        let ours = x.rows <= ROWS_PER_PASS || self.recording() || self.rows_alone();
        if same && ours && self.tensor_core_products(x.cols) {
            check::linear((x.rows, x.cols), &gate.name, (gate.rows, gate.cols))?;
            let h = self.tensor("swiglu output", x.rows, gate.rows)?;
            let ptr = self.ptr(&h.data);
            self.gemm_tc(x, gate, TcProduct::GateUp(up), ptr)?;
            return Ok(h);
        }
        let one_pass = x.rows == 1 && x.cols % 8 == 0 && same;
        if !one_pass || self.tensor_core_products(x.cols) {
            return self.swiglu(&self.linear(x, gate)?, &self.linear(x, up)?);
        }
        check::linear((x.rows, x.cols), &gate.name, (gate.rows, gate.cols))?;
        let (k, m) = (x.cols, gate.rows);
        let parts = self.parts(m, k);
        let h = self.tensor("swiglu output", 1, m)?;
        let (ki, mi, pi) = (k as i32, m as i32, parts as i32);
        let name = match self.options().mode {
            ReductionMode::Deterministic => "gate_up_swiglu_bf16",
            ReductionMode::Fast => "gate_up_swiglu_fast_bf16",
        };
        // SAFETY: x is 1 x k, gate and up m x k (checked equal), h 1 x m,
        // k % 8 == 0; warps past m do nothing.
        unsafe {
            self.launch(
                name,
                cfg((m.div_ceil(8 / parts) as u32, 1, 1)),
                &[&*x.data, &gate.data, &up.data, &*h.data, &ki, &mi, &pi],
            )
        }?;
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::{TC_PLAIN, TC_STAGED};
    use crate::backend::cuda::kernels::Kernel;

    /// Every name a launch may take is an entry point linear_tc.cu exports.
    #[test]
    fn tensor_core_entry_point_tables_name_exported_kernels() {
        let exported = Kernel::LinearTc.functions();
        let named: Vec<&str> = TC_PLAIN
            .iter()
            .flatten()
            .chain(TC_STAGED.iter().flatten().flatten())
            .copied()
            .collect();
        for name in named.iter().filter(|n| !n.is_empty()) {
            assert!(
                exported.contains(name),
                "{name} is not exported by linear_tc.cu"
            );
        }
        let listed = named.iter().filter(|n| !n.is_empty()).count();
        assert_eq!(
            listed,
            exported.len(),
            "a linear_tc.cu entry point is missing from the tables"
        );
    }
}
