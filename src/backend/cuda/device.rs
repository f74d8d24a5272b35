//! The CUDA implementation of `Backend`: bf16 bits in device buffers, one
//! launch per op (kernels.rs), every launch checked. Outputs come from a
//! buffer pool (pool.rs). Decode products (<= 8 rows) use our GEMV; larger
//! products use cuBLAS when it loads, except in a deterministic batched
//! decode step, which keeps our GEMV so each sequence's bits are its own. Reductions follow the run's
//! `ReductionMode`; the fused QKV kernel is fixed-order in both modes.
//!
//! This file holds the backend itself: opening the device, its options, and
//! the one `impl Backend` (a trait impl cannot be split). Most of its
//! methods call the inherent method of the same name, defined in the file
//! of its concern (linear.rs, rowwise.rs, qkv.rs, attention.rs, moe.rs,
//! graphs.rs, tensor.rs; launch.rs and buffers.rs hold what they share).
//! Where a `pub(super)` inherent method is visible, here and in those
//! files, it is found before the trait method of the same name, so these
//! calls do not recurse, and calls between the files reach the inherent
//! method directly. The state is shared through `&self` only, on one
//! stream and behind Mutexes, which is what makes the backend Send + Sync.

use super::buffers::COUNTERS;
use super::graphs::{Recording, StepInputs};
use super::kernels;
use super::launch::{err, loaded, BLOCK};
use super::moe::ExpertTables;
use super::pool::Pools;
use super::tensor::{CudaCache, CudaTensor, CudaWeight};
use super::{CudaOptions, ReductionMode};
use crate::backend::{AttnDims, Backend, DeviceInfo, MoeWeights, UnsupportedDim};
use crate::error::{Error, Result};
use crate::model::safetensors::HostTensor;
use cudarc::cublas::{sys as blas_sys, CudaBlas};
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

pub struct CudaBackend {
    pub(super) stream: Arc<CudaStream>,
    pub(super) functions: BTreeMap<&'static str, CudaFunction>,
    pub(super) info: DeviceInfo,
    pub(super) options: Mutex<CudaOptions>,
    pub(super) sms: usize,
    /// Blocks of qkv_fused1_bf16 the GPU holds at once (one wave; asked
    /// once here rather than at every decode launch).
    pub(super) qkv1_wave: usize,
    /// Launch with programmatic dependent launch (compute capability 9.0
    /// and later, unless LOCKSTEP_CUDA_PDL=0).
    pub(super) pdl: bool,
    /// Many-row tensor-core products run the cluster kernels of
    /// linear_tc.cu (compute capability 9.0 and later, unless
    /// LOCKSTEP_CUDA_TC_STAGED=0: the same bits, kept switchable so the
    /// two kernels can be timed against each other in one process).
    pub(super) tc_staged: bool,
    /// One-row decode attention spreads each head over a thread-block
    /// cluster (attn_decode_cluster_bf16; compute capability 9.0 and
    /// later, with LOCKSTEP_CUDA_ATTN_CLUSTER=1): meant to give the bits of
    /// the one-block kernel. Off by default until it has run on a GPU.
    pub(super) attn_cluster: bool,
    /// The kernel family a recorded step leaves out (1 + its place in
    /// KernelFamily::ALL; 0: none): `omit_from_recorded_steps`.
    pub(super) omit: AtomicU8,
    pub(super) blas: Option<CudaBlas>,
    pub(super) pools: Pools,
    /// Block-completion counters of the last-block pattern; zero between
    /// launches (each launch resets what it used).
    pub(super) counters: CudaSlice<u32>,
    /// f32 accumulators of the atomic (fast mode) combinations; zero between
    /// launches. Grown outside recordings.
    pub(super) zeros: Mutex<CudaSlice<f32>>,
    pub(super) step: Mutex<StepInputs>,
    pub(super) step_ptrs: (u64, u64),
    pub(super) recording: Mutex<Recording>,
    /// Reports at most this much free memory (a smaller card, for tests and
    /// for planning a deployment).
    pub(super) memory_limit: Mutex<Option<usize>>,
    /// Per MoE layer (keyed by its router weight's address): the device
    /// tables of expert weight addresses the grouped decode kernels index.
    pub(super) moe_tables: Mutex<BTreeMap<u64, ExpertTables>>,
    /// Inside a batched decode step (`Backend::batch_step`): products keep
    /// the GEMV's summation at any row count in deterministic mode.
    pub(super) in_batch_step: AtomicBool,
    /// Launches run so far: our kernels and cuBLAS calls as they are
    /// enqueued, and a replayed recorded step as the launches it recorded
    /// (`Backend::launches_run`).
    pub(super) launches: AtomicU64,
}

// SAFETY: one stream, and every method that touches shared state goes
// through a Mutex; cudarc's handles are themselves Send + Sync.
unsafe impl Send for CudaBackend {}
unsafe impl Sync for CudaBackend {}

impl CudaBackend {
    /// Opens GPU `ordinal` in deterministic mode without CUDA graphs.
    pub fn new(ordinal: usize) -> Result<Self> {
        Self::with_options(ordinal, CudaOptions::default())
    }

    /// Opens GPU `ordinal`, compiles every kernel for its architecture.
    pub fn with_options(ordinal: usize, options: CudaOptions) -> Result<Self> {
        Self::open(ordinal, options, None)
    }

    /// GPU `ordinal` with `fault` planted in its kernels (negative controls).
    pub fn with_fault(
        ordinal: usize,
        options: CudaOptions,
        fault: super::CudaFault,
    ) -> Result<Self> {
        Self::open(ordinal, options, Some(fault))
    }

    fn open(ordinal: usize, options: CudaOptions, fault: Option<super::CudaFault>) -> Result<Self> {
        let options = options.checked()?;
        let ctx = std::panic::catch_unwind(|| CudaContext::new(ordinal))
            .map_err(|_| Error::Unavailable {
                backend: crate::ident::BackendKind::Cuda,
                problem:
                    "could not load the CUDA driver (libcuda.so): no NVIDIA driver on this machine"
                        .into(),
            })?
            .map_err(|e| Error::Unavailable {
                backend: crate::ident::BackendKind::Cuda,
                problem: format!("no usable GPU {ordinal}: {e}"),
            })?;
        // SAFETY: one stream only, so cudarc's cross-stream events are not
        // needed; without them allocation is cheaper and recording works.
        unsafe { ctx.disable_event_tracking() };
        let (major, minor) = ctx
            .compute_capability()
            .map_err(err("compute capability"))?;
        let arch: &'static str = Box::leak(format!("sm_{major}{minor}").into_boxed_str());
        let functions = kernels::load_all(&ctx, arch, fault)?;
        let name = ctx.name().map_err(err("device name"))?;
        let sms = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .map_err(err("SM count"))?;
        // A stream of its own: the legacy default stream cannot be recorded.
        let stream = ctx.new_stream().map_err(err("creating a stream"))?;
        let (blas, gemm) = Self::open_blas(&stream, options.mode);
        let mut driver = 0i32;
        // SAFETY: cuDriverGetVersion writes one int through a valid pointer.
        unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut driver) };
        let (mut nv_major, mut nv_minor) = (0i32, 0i32);
        // SAFETY: nvrtcVersion writes two ints through valid pointers.
        unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut nv_major, &mut nv_minor) };
        let mut details = BTreeMap::new();
        details.insert("compute_capability".into(), format!("{major}.{minor}"));
        details.insert("sm_count".into(), sms.to_string());
        details.insert(
            "driver_api".into(),
            format!("{}.{}", driver / 1000, (driver % 1000) / 10),
        );
        details.insert("nvrtc".into(), format!("{nv_major}.{nv_minor}"));
        details.insert("prefill_gemm".into(), gemm);
        details.insert("tf32".into(), "off".into());
        let pdl = major >= 9 && std::env::var("LOCKSTEP_CUDA_PDL").as_deref() != Ok("0");
        details.insert("pdl".into(), if pdl { "on" } else { "off" }.into());
        let tc_staged =
            major >= 9 && std::env::var("LOCKSTEP_CUDA_TC_STAGED").as_deref() != Ok("0");
        details.insert(
            "tc_staged".into(),
            if tc_staged { "on" } else { "off" }.into(),
        );
        let attn_cluster =
            major >= 9 && std::env::var("LOCKSTEP_CUDA_ATTN_CLUSTER").as_deref() == Ok("1");
        details.insert(
            "attn_cluster".into(),
            if attn_cluster { "on" } else { "off" }.into(),
        );
        if let Some(f) = fault {
            details.insert("planted_fault".into(), f.name().into());
        }
        let info = DeviceInfo {
            backend: crate::ident::BackendKind::Cuda,
            device: name,
            numerics: crate::ident::Numerics::Bf16,
            details,
        };
        let qkv1 = "qkv_fused1_bf16";
        let per_sm = loaded(&functions, qkv1)?
            .occupancy_max_active_blocks_per_multiprocessor(BLOCK, 0, None)
            .map_err(err(qkv1))?;
        let qkv1_wave = per_sm as usize * sms as usize;
        let counters = stream
            .alloc_zeros::<u32>(COUNTERS)
            .map_err(err("block counters"))?;
        let zeros = stream.alloc_zeros::<f32>(1).map_err(err("accumulators"))?;
        let ids = stream.alloc_zeros::<u32>(1).map_err(err("step token"))?;
        let pos = stream.alloc_zeros::<i32>(1).map_err(err("step position"))?;
        let step_ptrs = (ids.device_ptr(&stream).0, pos.device_ptr(&stream).0);
        Ok(CudaBackend {
            functions,
            info,
            options: Mutex::new(options),
            sms: sms as usize,
            qkv1_wave,
            pdl,
            tc_staged,
            attn_cluster,
            omit: AtomicU8::new(0),
            blas,
            pools: Pools::new(),
            counters,
            zeros: Mutex::new(zeros),
            step: Mutex::new(StepInputs {
                staged: None,
                ids,
                pos,
            }),
            step_ptrs,
            recording: Mutex::new(Recording::default()),
            memory_limit: Mutex::new(None),
            moe_tables: Mutex::new(BTreeMap::new()),
            in_batch_step: AtomicBool::new(false),
            launches: AtomicU64::new(0),
            stream,
        })
    }

    /// cuBLAS for multi-row products, configured for the mode: f32 split-K
    /// reductions only, and atomics only in fast mode. None (with the
    /// reason, for the fingerprint) when the library does not load.
    fn open_blas(stream: &Arc<CudaStream>, mode: ReductionMode) -> (Option<CudaBlas>, String) {
        let blas = match std::panic::catch_unwind(|| CudaBlas::new(stream.clone())) {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => return (None, format!("own kernels (cuBLAS: {e:?})")),
            Err(_) => return (None, "own kernels (cuBLAS did not load)".into()),
        };
        // SAFETY: a live handle; this only sets handle state.
        let set = unsafe {
            blas_sys::cublasSetMathMode(
                *blas.handle(),
                blas_sys::cublasMath_t::CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION,
            )
        }
        .result()
        .and_then(|_| Self::blas_atomics(&blas, mode));
        match set {
            Ok(()) => (Some(blas), "cublas".into()),
            Err(e) => (None, format!("own kernels (cuBLAS settings: {e:?})")),
        }
    }

    /// Makes `free_memory` report at most `bytes`: the engine then refuses
    /// models as it would on a card of that size.
    pub fn set_memory_limit(&self, bytes: Option<usize>) {
        *self.memory_limit.lock().unwrap_or_else(|p| p.into_inner()) = bytes;
    }

    pub fn options(&self) -> CudaOptions {
        *self.options.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Switches the reduction mode and step recording for later runs (one
    /// loaded model measured in every configuration).
    pub fn set_options(&self, options: CudaOptions) -> Result<()> {
        let options = options.checked()?;
        self.release_step();
        if let Some(blas) = &self.blas {
            Self::blas_atomics(blas, options.mode).map_err(|e| Error::Backend {
                backend: crate::ident::BackendKind::Cuda,
                problem: format!("cuBLAS atomics mode: {e:?}"),
            })?;
        }
        *self.options.lock().unwrap_or_else(|p| p.into_inner()) = options;
        Ok(())
    }

    fn blas_atomics(
        blas: &CudaBlas,
        mode: ReductionMode,
    ) -> std::result::Result<(), cudarc::cublas::result::CublasError> {
        let atomics = match mode {
            ReductionMode::Deterministic => {
                blas_sys::cublasAtomicsMode_t::CUBLAS_ATOMICS_NOT_ALLOWED
            }
            ReductionMode::Fast => blas_sys::cublasAtomicsMode_t::CUBLAS_ATOMICS_ALLOWED,
        };
        // SAFETY: a live handle; this only sets handle state.
        unsafe { blas_sys::cublasSetAtomicsMode(*blas.handle(), atomics) }.result()
    }
}

impl Backend for CudaBackend {
    type Tensor = CudaTensor;
    type Weight = CudaWeight;
    type Cache = CudaCache;

    fn kind(&self) -> crate::ident::BackendKind {
        crate::ident::BackendKind::Cuda
    }

    fn numerics(&self) -> crate::ident::Numerics {
        crate::ident::Numerics::Bf16
    }

    fn launches_run(&self) -> Option<u64> {
        Some(self.launches.load(Ordering::Relaxed))
    }

    fn device_info(&self) -> DeviceInfo {
        let o = self.options();
        let mut info = self.info.clone();
        info.details
            .insert("reduction_mode".into(), o.mode.name().into());
        info.details
            .insert("products".into(), o.products.name().into());
        info.details.insert(
            "cuda_graphs".into(),
            if o.graphs { "on" } else { "off" }.into(),
        );
        info
    }

    fn upload(&self, name: &str, t: &HostTensor) -> Result<CudaWeight> {
        self.upload_packed(name, &[t])
    }

    fn upload_packed(&self, name: &str, parts: &[&HostTensor]) -> Result<CudaWeight> {
        CudaBackend::upload_packed(self, name, parts)
    }

    fn embed(&self, table: &CudaWeight, ids: &[u32]) -> Result<CudaTensor> {
        CudaBackend::embed(self, table, ids)
    }

    fn rms_norm(&self, x: &CudaTensor, w: &CudaWeight, eps: f64) -> Result<CudaTensor> {
        CudaBackend::rms_norm(self, x, w, eps)
    }

    fn linear(&self, x: &CudaTensor, w: &CudaWeight) -> Result<CudaTensor> {
        CudaBackend::linear(self, x, w)
    }

    fn rope(
        &self,
        x: &CudaTensor,
        positions: &[usize],
        head_dim: usize,
        theta: f64,
    ) -> Result<CudaTensor> {
        CudaBackend::rope(self, x, positions, head_dim, theta)
    }

    fn fused_qkv(
        &self,
        x: &CudaTensor,
        qkv: &CudaWeight,
        q_norm: &CudaWeight,
        k_norm: &CudaWeight,
        dims: &AttnDims,
        positions: &[usize],
    ) -> Result<(CudaTensor, CudaTensor, CudaTensor)> {
        CudaBackend::fused_qkv(self, x, qkv, q_norm, k_norm, dims, positions)
    }

    fn fused_qkv_append(
        &self,
        x: &CudaTensor,
        qkv: &CudaWeight,
        q_norm: &CudaWeight,
        k_norm: &CudaWeight,
        dims: &AttnDims,
        positions: &[usize],
        cache: &mut CudaCache,
    ) -> Result<CudaTensor> {
        CudaBackend::fused_qkv_append(self, x, qkv, q_norm, k_norm, dims, positions, cache)
    }

    fn new_cache(&self, dims: &AttnDims, capacity: usize) -> Result<CudaCache> {
        CudaBackend::new_cache(self, dims, capacity)
    }

    fn cache_append(&self, cache: &mut CudaCache, k: &CudaTensor, v: &CudaTensor) -> Result<()> {
        CudaBackend::cache_append(self, cache, k, v)
    }

    fn attention(
        &self,
        q: &CudaTensor,
        cache: &CudaCache,
        dims: &AttnDims,
        positions: &[usize],
    ) -> Result<CudaTensor> {
        CudaBackend::attention(self, q, cache, dims, positions)
    }

    fn attention_step(
        &self,
        q: &CudaTensor,
        k: &CudaTensor,
        v: &CudaTensor,
        caches: &mut [&mut CudaCache],
        dims: &AttnDims,
        positions: &[usize],
    ) -> Result<CudaTensor> {
        CudaBackend::attention_step(self, q, k, v, caches, dims, positions)
    }

    fn batch_step(&self, on: bool) {
        self.in_batch_step.store(on, Ordering::Relaxed);
    }

    fn argmax_rows(&self, logits: &CudaTensor) -> Result<Vec<u32>> {
        CudaBackend::argmax_rows(self, logits)
    }

    fn add_rms_norm(
        &self,
        x: &CudaTensor,
        r: &CudaTensor,
        w: &CudaWeight,
        eps: f64,
    ) -> Result<(CudaTensor, CudaTensor)> {
        CudaBackend::add_rms_norm(self, x, r, w, eps)
    }

    fn gate_up_swiglu(
        &self,
        x: &CudaTensor,
        gate: &CudaWeight,
        up: &CudaWeight,
    ) -> Result<CudaTensor> {
        CudaBackend::gate_up_swiglu(self, x, gate, up)
    }

    fn add(&self, a: &CudaTensor, b: &CudaTensor) -> Result<CudaTensor> {
        self.elementwise("add_bf16", a, b)
    }

    fn swiglu(&self, gate: &CudaTensor, up: &CudaTensor) -> Result<CudaTensor> {
        self.elementwise("swiglu_bf16", gate, up)
    }

    fn moe(&self, x: &CudaTensor, w: &MoeWeights<CudaWeight>) -> Result<CudaTensor> {
        CudaBackend::moe(self, x, w)
    }

    fn rows(&self, x: &CudaTensor, start: usize, n: usize) -> Result<CudaTensor> {
        CudaBackend::rows(self, x, start, n)
    }

    fn concat_rows(&self, parts: &[CudaTensor]) -> Result<CudaTensor> {
        CudaBackend::concat_rows(self, parts)
    }

    fn activation_from_host(&self, data: &[f64], rows: usize, cols: usize) -> Result<CudaTensor> {
        CudaBackend::activation_from_host(self, data, rows, cols)
    }

    fn to_host(&self, x: &CudaTensor) -> Result<(Vec<f64>, [usize; 2])> {
        CudaBackend::to_host(self, x)
    }

    fn argmax(&self, logits: &CudaTensor) -> Result<u32> {
        CudaBackend::argmax(self, logits)
    }

    fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(err("synchronize"))
    }

    /// Attention and the fused kernel load keys and weights 16 bytes at a
    /// time and give one block of BLOCK threads to a head; any such width
    /// works, including ones that do not divide the block (48, 80, 96).
    fn unsupported_dim(&self, cfg: &crate::model::config::Qwen3Config) -> Option<UnsupportedDim> {
        let hd = cfg.head_dim;
        if hd % 8 != 0 || hd > BLOCK as usize {
            return Some(UnsupportedDim {
                field: "head_dim",
                value: hd,
                supported: "a multiple of 8 up to 256",
            });
        }
        if cfg.hidden_size % 8 != 0 {
            return Some(UnsupportedDim {
                field: "hidden_size",
                value: cfg.hidden_size,
                supported: "a multiple of 8",
            });
        }
        None
    }

    fn free_memory(&self) -> Option<usize> {
        let free = self.stream.context().mem_get_info().ok().map(|(f, _)| f)?;
        let limit = *self.memory_limit.lock().unwrap_or_else(|p| p.into_inner());
        Some(limit.map_or(free, |l| free.min(l)))
    }

    fn stage_step(&self, token: u32, position: usize) -> Result<()> {
        CudaBackend::stage_step(self, token, position)
    }

    fn begin_step_capture(&self) -> Result<bool> {
        CudaBackend::begin_step_capture(self)
    }

    fn end_step_capture(&self) -> Result<()> {
        CudaBackend::end_step_capture(self)
    }

    fn replay_step(&self) -> Result<()> {
        CudaBackend::replay_step(self)
    }

    fn cache_advance(&self, cache: &mut CudaCache, n: usize) {
        cache.len += n;
    }

    fn release_step(&self) {
        CudaBackend::release_step(self)
    }
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        self.release_step();
    }
}
