//! The CUDA implementation of `Backend`: bf16 bits in device buffers, one
//! launch per op (kernels.rs), every launch checked. Outputs come from a
//! buffer pool (pool.rs). Decode products (<= 8 rows) use our GEMV; larger
//! products use cuBLAS when it loads. Reductions follow the run's
//! `ReductionMode`; the fused QKV kernel is fixed-order in both modes.

use super::kernels;
use super::pool::{Buf, Frozen, Pool, Pools, Take};
use super::{CudaOptions, ReductionMode};
use crate::backend::{check, route, AttnDims, Backend, DeviceInfo, MoeWeights};
use crate::error::{Error, Result};
use crate::model::safetensors::{Dtype, HostTensor};
use crate::util::bf16_bits;
use cudarc::cublas::{sys as blas_sys, CudaBlas};
use cudarc::driver::{
    sys, CudaContext, CudaFunction, CudaGraph, CudaSlice, CudaStream, DevicePtr, DevicePtrMut,
    DeviceRepr, DriverError, LaunchConfig,
};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

pub struct CudaTensor {
    pub rows: usize,
    pub cols: usize,
    data: Buf<u16>,
}

pub struct CudaWeight {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    data: CudaSlice<u16>,
}

pub struct CudaCache {
    len: usize,
    cap: usize,
    kv_dim: usize,
    k: CudaSlice<u16>,
    v: CudaSlice<u16>,
}

/// The token and position of the decode step about to run, on the device,
/// so that a recorded step reads new ones on every replay.
struct StepInputs {
    staged: Option<(u32, usize)>,
    ids: CudaSlice<u32>,
    pos: CudaSlice<i32>,
}

/// A recorded decode step and the pooled buffers its launches use.
struct Recorded {
    graph: CudaGraph,
    frozen: Frozen,
}

#[derive(Default)]
struct Recording {
    active: bool,
    step: Option<Recorded>,
}

pub struct CudaBackend {
    stream: Arc<CudaStream>,
    functions: BTreeMap<&'static str, CudaFunction>,
    info: DeviceInfo,
    options: Mutex<CudaOptions>,
    sms: usize,
    /// Blocks of qkv_fused1_bf16 the GPU holds at once (one wave; asked
    /// once here rather than at every decode launch).
    qkv1_wave: usize,
    /// Launch with programmatic dependent launch (compute capability 9.0
    /// and later, unless LOCKSTEP_CUDA_PDL=0).
    pdl: bool,
    blas: Option<CudaBlas>,
    pools: Pools,
    /// Block-completion counters of the last-block pattern; zero between
    /// launches (each launch resets what it used).
    counters: CudaSlice<u32>,
    /// f32 accumulators of the atomic (fast mode) combinations; zero between
    /// launches. Grown outside recordings.
    zeros: Mutex<CudaSlice<f32>>,
    step: Mutex<StepInputs>,
    step_ptrs: (u64, u64),
    recording: Mutex<Recording>,
    /// Reports at most this much free memory (a smaller card, for tests and
    /// for planning a deployment).
    memory_limit: Mutex<Option<usize>>,
    /// Per MoE layer (keyed by its router weight's address): the device
    /// tables of expert weight addresses the grouped decode kernels index.
    moe_tables: Mutex<BTreeMap<u64, ExpertTables>>,
}

/// Device arrays of each expert's gate, up and down weight addresses.
struct ExpertTables {
    gate: CudaSlice<u64>,
    up: CudaSlice<u64>,
    down: CudaSlice<u64>,
}

// SAFETY: one stream, and every method that touches shared state goes
// through a Mutex; cudarc's handles are themselves Send + Sync.
unsafe impl Send for CudaBackend {}
unsafe impl Sync for CudaBackend {}

fn err(op: &str) -> impl Fn(DriverError) -> Error + '_ {
    move |e| Error::Backend {
        backend: "cuda",
        problem: format!("{op}: {e}"),
    }
}

fn shape(op: &'static str, problem: String) -> Error {
    Error::Shape { op, problem }
}

const BLOCK: u32 = 256;
/// Activation rows one GEMV pass takes (ROWS_PER_PASS in common.cuh).
const ROWS_PER_PASS: usize = 8;
/// Keys per attention chunk (ATTN_CHUNK in attention.cu).
const ATTN_CHUNK: usize = 64;
const COUNTERS: usize = 1 << 20;
/// Decode attention takes one launch (attn_decode_bf16) while a step covers
/// at most this many keys (with CUDA graphs: the cache's capacity); longer
/// contexts are split over the GPU in three launches.
const DECODE_ONE_LAUNCH_KEYS: usize = 2048;
/// Attention score scratch per launch; longer prefills go in row batches.
const ATTN_SCRATCH_BYTES: usize = 256 << 20;

fn grid_for(n: usize) -> u32 {
    n.div_ceil(BLOCK as usize) as u32
}

fn loaded<'a>(
    functions: &'a BTreeMap<&'static str, CudaFunction>,
    name: &str,
) -> Result<&'a CudaFunction> {
    functions.get(name).ok_or_else(|| Error::Backend {
        backend: "cuda",
        problem: format!("kernel {name} is not loaded"),
    })
}

fn cfg(grid: (u32, u32, u32)) -> LaunchConfig {
    LaunchConfig {
        grid_dim: grid,
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block per normalised group, as wide as the group up to 1024 threads
/// (a multiple of NORM_THREADS = 128, whose order the kernels' sums follow
/// whatever the block size).
fn per_group(groups: usize, width: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (groups as u32, 1, 1),
        block_dim: (width.div_ceil(128).clamp(1, 8) as u32 * 128, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A kernel argument as the 8-byte word CUDA copies its parameter from:
/// device addresses whole, 4-byte scalars in the low half (little endian).
trait KernelArg {
    fn word(&self, stream: &CudaStream) -> u64;
}

impl KernelArg for i32 {
    fn word(&self, _: &CudaStream) -> u64 {
        *self as u32 as u64
    }
}

impl KernelArg for f32 {
    fn word(&self, _: &CudaStream) -> u64 {
        self.to_bits() as u64
    }
}

impl KernelArg for u64 {
    fn word(&self, _: &CudaStream) -> u64 {
        *self
    }
}

impl KernelArg for usize {
    fn word(&self, _: &CudaStream) -> u64 {
        *self as u64
    }
}

impl<T> KernelArg for CudaSlice<T> {
    fn word(&self, stream: &CudaStream) -> u64 {
        self.device_ptr(stream).0
    }
}

/// The most parameters any kernel of kernels/ takes.
const MAX_ARGS: usize = 24;

/// A device pointer for a kernel argument, and what keeps it alive.
struct DevArg<T: DeviceRepr> {
    ptr: u64,
    _keep: Option<Buf<T>>,
}

impl CudaBackend {
    /// Opens GPU `ordinal` in deterministic mode without CUDA graphs.
    pub fn new(ordinal: usize) -> Result<Self> {
        Self::with_options(ordinal, CudaOptions::default())
    }

    /// Opens GPU `ordinal`, compiles every kernel for its architecture.
    pub fn with_options(ordinal: usize, options: CudaOptions) -> Result<Self> {
        let ctx = std::panic::catch_unwind(|| CudaContext::new(ordinal))
            .map_err(|_| Error::Backend {
                backend: "cuda",
                problem:
                    "could not load the CUDA driver (libcuda.so): no NVIDIA driver on this machine"
                        .into(),
            })?
            .map_err(|e| Error::Backend {
                backend: "cuda",
                problem: format!("no usable GPU {ordinal}: {e}"),
            })?;
        // SAFETY: one stream only, so cudarc's cross-stream events are not
        // needed; without them allocation is cheaper and recording works.
        unsafe { ctx.disable_event_tracking() };
        let (major, minor) = ctx
            .compute_capability()
            .map_err(err("compute capability"))?;
        let arch: &'static str = Box::leak(format!("sm_{major}{minor}").into_boxed_str());
        let functions = kernels::load_all(&ctx, arch)?;
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
        let info = DeviceInfo {
            backend: "cuda".into(),
            device: name,
            numerics: "bf16".into(),
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
        self.release_step();
        if let Some(blas) = &self.blas {
            Self::blas_atomics(blas, options.mode).map_err(|e| Error::Backend {
                backend: "cuda",
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

    fn func(&self, name: &'static str) -> Result<&CudaFunction> {
        loaded(&self.functions, name)
    }

    /// Launches kernel `name` on the backend's stream. With programmatic
    /// dependent launch (`pdl`) the kernel may be scheduled while the
    /// previous one finishes: every kernel calls `pdl_sync` (common.cuh)
    /// before touching what earlier kernels wrote, so results are the same.
    ///
    /// # Safety
    /// `args` must match the kernel's parameters in number, order and type,
    /// and the kernel must stay inside the buffers they describe.
    unsafe fn launch(
        &self,
        name: &'static str,
        cfg: LaunchConfig,
        args: &[&dyn KernelArg],
    ) -> Result<()> {
        let f = self.func(name)?;
        assert!(args.len() <= MAX_ARGS, "{name}: too many kernel arguments");
        let mut words = [0u64; MAX_ARGS];
        for (w, a) in words.iter_mut().zip(args) {
            *w = a.word(&self.stream);
        }
        let mut params = [std::ptr::null_mut::<std::ffi::c_void>(); MAX_ARGS];
        for (i, p) in params.iter_mut().enumerate() {
            *p = words.as_mut_ptr().add(i).cast();
        }
        // SAFETY (of the zeroed union): every field of the value is plain data.
        let mut value: sys::CUlaunchAttributeValue = std::mem::zeroed();
        value.programmaticStreamSerializationAllowed = 1;
        let mut attr = sys::CUlaunchAttribute {
            id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
            pad: [0; 4],
            value,
        };
        let config = sys::CUlaunchConfig {
            gridDimX: cfg.grid_dim.0,
            gridDimY: cfg.grid_dim.1,
            gridDimZ: cfg.grid_dim.2,
            blockDimX: cfg.block_dim.0,
            blockDimY: cfg.block_dim.1,
            blockDimZ: cfg.block_dim.2,
            sharedMemBytes: cfg.shared_mem_bytes,
            hStream: self.stream.cu_stream(),
            attrs: if self.pdl {
                &mut attr
            } else {
                std::ptr::null_mut()
            },
            numAttrs: self.pdl as u32,
        };
        self.stream.context().bind_to_thread().map_err(err(name))?;
        sys::cuLaunchKernelEx(
            &config,
            f.cu_function(),
            params.as_mut_ptr(),
            std::ptr::null_mut(),
        )
        .result()
        .map_err(err(name))
    }

    fn recording(&self) -> bool {
        self.recording
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .active
    }

    fn buf<T: DeviceRepr>(&self, pool: &Arc<Pool<T>>, what: &str, n: usize) -> Result<Buf<T>> {
        match pool.take(&self.stream, n) {
            Ok(Take::Got(b)) => Ok(b),
            Ok(Take::MissWhileRecording) => Err(Error::Backend {
                backend: "cuda",
                problem: format!(
                    "recording a decode step needs a new buffer for {what} ({n} elements): steps must repeat the warm-up step's shapes"
                ),
            }),
            Err(e) => Err(Error::Backend {
                backend: "cuda",
                problem: format!(
                    "allocating {what} ({} bytes): {e}",
                    n * std::mem::size_of::<T>()
                ),
            }),
        }
    }

    fn tensor(&self, what: &str, rows: usize, cols: usize) -> Result<CudaTensor> {
        Ok(CudaTensor {
            rows,
            cols,
            data: self.buf(&self.pools.u16s, what, rows * cols)?,
        })
    }

    fn ptr<T>(&self, s: &CudaSlice<T>) -> u64 {
        s.device_ptr(&self.stream).0
    }

    fn no_host_transfer(&self, what: &str) -> Result<()> {
        if self.recording() {
            return Err(Error::Backend {
                backend: "cuda",
                problem: format!("{what} needs the host, which a recorded decode step cannot"),
            });
        }
        Ok(())
    }

    /// Small integer inputs on the device: the staged step buffer when they
    /// are the staged step's, else a pooled copy.
    fn ints<T: DeviceRepr + Copy>(
        &self,
        pool: &Arc<Pool<T>>,
        what: &str,
        vals: &[T],
        staged: Option<u64>,
    ) -> Result<DevArg<T>> {
        if let Some(ptr) = staged {
            return Ok(DevArg { ptr, _keep: None });
        }
        self.no_host_transfer(what)?;
        let mut b = self.buf(pool, what, vals.len())?;
        self.stream.memcpy_htod(vals, &mut *b).map_err(err(what))?;
        Ok(DevArg {
            ptr: self.ptr(&b),
            _keep: Some(b),
        })
    }

    fn staged(&self) -> Option<(u32, usize)> {
        self.step.lock().unwrap_or_else(|p| p.into_inner()).staged
    }

    fn positions(&self, positions: &[usize]) -> Result<DevArg<i32>> {
        let staged = match self.staged() {
            Some((_, p)) if positions == [p] => Some(self.step_ptrs.1),
            _ => None,
        };
        let p: Vec<i32> = positions.iter().map(|&p| p as i32).collect();
        self.ints(&self.pools.i32s, "positions", &p, staged)
    }

    /// `n` f32 accumulators that are zero now and that the caller's kernel
    /// leaves zero.
    fn zeroed(&self, n: usize) -> Result<u64> {
        let mut z = self.zeros.lock().unwrap_or_else(|p| p.into_inner());
        if z.len() < n {
            self.no_host_transfer("growing the accumulators")?;
            *z = self
                .stream
                .alloc_zeros::<f32>(n)
                .map_err(|e| Error::Backend {
                    backend: "cuda",
                    problem: format!("allocating {n} f32 accumulators: {e}"),
                })?;
        }
        Ok(self.ptr(&z))
    }

    fn counters(&self, n: usize, what: &str) -> Result<u64> {
        if n > COUNTERS {
            return Err(Error::Backend {
                backend: "cuda",
                problem: format!("{what} needs {n} block counters; the backend has {COUNTERS}"),
            });
        }
        Ok(self.ptr(&self.counters))
    }

    /// Warps per output row. Each lane keeps a group of 16-byte loads in
    /// flight (warp_dot in common.cuh), so a product needs about one block
    /// of 8 warps per SM: rows are split only while there are fewer warps
    /// than that, and only while each lane keeps at least two chunks. The
    /// split fixes the summation order, so it depends on the shape alone.
    /// Fast mode splits at least four ways, combined with atomics.
    fn parts(&self, m: usize, k: usize) -> usize {
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

    fn gemv(&self, x: &CudaTensor, w: &CudaWeight, out: &mut CudaTensor) -> Result<()> {
        let (n, k, m) = (x.rows, x.cols, w.rows);
        let parts = self.parts(m, k);
        let grid = (
            m.div_ceil(8 / parts) as u32,
            n.div_ceil(ROWS_PER_PASS) as u32,
            1,
        );
        let (ni, ki, mi, pi) = (n as i32, k as i32, m as i32, parts as i32);
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
            backend: "cuda",
            problem: format!("cublasGemmEx for {} ({n}x{k} by {m}x{k}): {e:?}", w.name),
        })
    }

    fn elementwise(
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

    fn weight_from_bits(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
        bits: Vec<u16>,
    ) -> Result<CudaWeight> {
        let data = self.stream.clone_htod(&bits).map_err(|e| Error::Backend {
            backend: "cuda",
            problem: format!("uploading {name} ({} bytes): {e}", 2 * bits.len()),
        })?;
        Ok(CudaWeight {
            name: name.to_string(),
            rows,
            cols,
            data,
        })
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
        let groups = x.rows.div_ceil(ROWS_PER_PASS);
        let counters = self.counters(groups * slots, "fused_qkv")?;
        let pos = self.positions(positions)?;
        let raw = self.buf(&self.pools.f32s, "fused projections", x.rows * qkv.rows)?;
        let parts = self.parts(qkv.rows, x.cols).min(8);
        let (kc, vc) = match cache {
            Some(c) => (self.ptr(&c.k), self.ptr(&c.v)),
            None => (0u64, 0u64),
        };
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
}

impl CudaBackend {
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
        let grid = LaunchConfig {
            grid_dim: (dims.n_heads as u32, 1, 1),
            block_dim: (512, 1, 1),
            shared_mem_bytes: (4 * (keys + keys / 32 + 1)) as u32,
        };
        // SAFETY: one block per head; shared memory holds `keys` scores and
        // keys / 32 + 1 half-chunk sums (keys <= DECODE_ONE_LAUNCH_KEYS keeps
        // it under the 48 KiB default), and the step attends to at most
        // `keys` positions (below the cache length, checked by the caller);
        // head_dim divides 256 and is a multiple of 8 (checked by the caller).
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

    fn expert_tables(&self, w: &MoeWeights<CudaWeight>) -> Result<u64> {
        let key = self.ptr(&w.router.data);
        let mut tables = self.moe_tables.lock().unwrap_or_else(|p| p.into_inner());
        if let std::collections::btree_map::Entry::Vacant(slot) = tables.entry(key) {
            self.no_host_transfer("building the expert tables")?;
            let addrs = |f: &dyn Fn(&crate::backend::ExpertWeights<CudaWeight>) -> &CudaWeight| {
                let v: Vec<u64> = w.experts.iter().map(|e| self.ptr(&f(e).data)).collect();
                self.stream.clone_htod(&v).map_err(err("expert tables"))
            };
            slot.insert(ExpertTables {
                gate: addrs(&|e| &e.gate)?,
                up: addrs(&|e| &e.up)?,
                down: addrs(&|e| &e.down)?,
            });
        }
        Ok(key)
    }

    /// One token's MoE entirely on the device: routing, the selected
    /// experts' products as grouped launches, the ordered weighted sum.
    /// Same bits as the host-routed path whenever the routing agrees.
    fn moe_decode(&self, x: &CudaTensor, w: &MoeWeights<CudaWeight>) -> Result<CudaTensor> {
        let e0 = &w.experts[0];
        let (hidden, inter, k) = (x.cols, e0.gate.rows, w.top_k);
        check::linear((1, hidden), &e0.gate.name, (e0.gate.rows, e0.gate.cols))?;
        check::linear((1, inter), &e0.down.name, (e0.down.rows, e0.down.cols))?;
        let key = self.expert_tables(w)?;
        let logits = self.linear(x, &w.router)?;
        let sel = self.buf(&self.pools.i32s, "moe selection", k)?;
        let wsel = self.buf(&self.pools.f32s, "moe weights", k)?;
        let (ne, ki, renorm) = (w.experts.len() as i32, k as i32, w.norm_topk_prob as i32);
        let threads = (w.experts.len().div_ceil(32) * 32) as u32;
        // SAFETY: one block, a thread per expert (<= 1024, checked by the
        // caller), reads n_experts logits and writes top_k <= 64 entries.
        unsafe {
            self.launch(
                "moe_route_bf16",
                LaunchConfig {
                    grid_dim: (1, 1, 1),
                    block_dim: (threads, 1, 1),
                    shared_mem_bytes: 0,
                },
                &[&*logits.data, &ne, &ki, &renorm, &*sel, &*wsel],
            )
        }?;
        let tables = self.moe_tables.lock().unwrap_or_else(|p| p.into_inner());
        let t = tables.get(&key).expect("built above");
        let h = self.tensor("expert activations", k, inter)?;
        let parts = self.parts(inter, hidden);
        let (hk, im, pi) = (hidden as i32, inter as i32, parts as i32);
        // SAFETY: every expert's gate and up are inter x hidden (checked on
        // expert 0; all experts share a shape, checked at upload by name);
        // selections are expert indices below n_experts; h holds k x inter.
        unsafe {
            self.launch(
                "moe_gate_up_bf16",
                cfg((inter.div_ceil(8 / parts) as u32, k as u32, 1)),
                &[&*x.data, &t.gate, &t.up, &*sel, &*h.data, &hk, &im, &pi],
            )
        }?;
        let y = self.tensor("expert outputs", k, hidden)?;
        let parts = self.parts(hidden, inter);
        let (dk, dm, pi) = (inter as i32, hidden as i32, parts as i32);
        // SAFETY: every down is hidden x inter; y holds k x hidden.
        unsafe {
            self.launch(
                "moe_down_bf16",
                cfg((hidden.div_ceil(8 / parts) as u32, k as u32, 1)),
                &[&*h.data, &t.down, &*sel, &*y.data, &dk, &dm, &pi],
            )
        }?;
        drop(tables);
        let out = self.tensor("moe output", 1, hidden)?;
        let (wi, ki) = (hidden as i32, k as i32);
        // SAFETY: y holds k rows of width; out one row.
        unsafe {
            self.launch(
                "moe_combine_bf16",
                cfg((grid_for(hidden), 1, 1)),
                &[&*y.data, &*wsel, &*out.data, &wi, &ki],
            )
        }?;
        Ok(out)
    }
}

impl Backend for CudaBackend {
    type Tensor = CudaTensor;
    type Weight = CudaWeight;
    type Cache = CudaCache;

    fn device_info(&self) -> DeviceInfo {
        let o = self.options();
        let mut info = self.info.clone();
        info.details
            .insert("reduction_mode".into(), o.mode.name().into());
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
        let (rows, cols) = check::packed(name, parts)?;
        let mut bits = Vec::with_capacity(rows * cols);
        for t in parts {
            if t.dtype == Dtype::BF16 {
                bits.extend(
                    t.bytes
                        .chunks_exact(2)
                        .map(|c| u16::from_le_bytes([c[0], c[1]])),
                );
            } else {
                bits.extend((0..t.numel()).map(|i| bf16_bits(t.get_f32(i))));
            }
        }
        self.weight_from_bits(name, rows, cols, bits)
    }

    fn embed(&self, table: &CudaWeight, ids: &[u32]) -> Result<CudaTensor> {
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

    fn rms_norm(&self, x: &CudaTensor, w: &CudaWeight, eps: f64) -> Result<CudaTensor> {
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

    fn linear(&self, x: &CudaTensor, w: &CudaWeight) -> Result<CudaTensor> {
        check::linear((x.rows, x.cols), &w.name, (w.rows, w.cols))?;
        let mut out = self.tensor("linear output", x.rows, w.rows)?;
        if x.cols % 8 == 0 {
            match &self.blas {
                Some(blas) if x.rows > ROWS_PER_PASS && !self.recording() => {
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

    fn rope(
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

    fn fused_qkv(
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

    fn new_cache(&self, dims: &AttnDims, capacity: usize) -> Result<CudaCache> {
        let kvd = dims.kv_dim();
        let alloc = |what: &str| {
            self.stream
                .alloc_zeros::<u16>((capacity * kvd).max(1))
                .map_err(|e| Error::Backend {
                    backend: "cuda",
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

    fn cache_append(&self, cache: &mut CudaCache, k: &CudaTensor, v: &CudaTensor) -> Result<()> {
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

    fn attention(
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
            || BLOCK as usize % hd != 0
            || hd % 8 != 0
        {
            return Err(shape(
                "attention",
                format!(
                    "q {}x{}, cache {} rows, head_dim {hd} (must divide {BLOCK}, a multiple of 8)",
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

    fn add_rms_norm(
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

    fn gate_up_swiglu(
        &self,
        x: &CudaTensor,
        gate: &CudaWeight,
        up: &CudaWeight,
    ) -> Result<CudaTensor> {
        let one_pass =
            x.rows == 1 && x.cols % 8 == 0 && (gate.rows, gate.cols) == (up.rows, up.cols);
        if !one_pass {
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

    fn add(&self, a: &CudaTensor, b: &CudaTensor) -> Result<CudaTensor> {
        self.elementwise("add_bf16", a, b)
    }

    fn swiglu(&self, gate: &CudaTensor, up: &CudaTensor) -> Result<CudaTensor> {
        self.elementwise("swiglu_bf16", gate, up)
    }

    fn moe(&self, x: &CudaTensor, w: &MoeWeights<CudaWeight>) -> Result<CudaTensor> {
        let e0 = w
            .experts
            .first()
            .ok_or_else(|| shape("moe", "no experts".into()))?;
        if x.rows == 1
            && x.cols % 8 == 0
            && e0.gate.rows % 8 == 0
            && w.top_k <= 64
            && w.experts.len() <= 1024
        {
            return self.moe_decode(x, w);
        }
        self.no_host_transfer("MoE routing of several tokens")?;
        let logits = self.linear(x, &w.router)?;
        let (lh, [_, e]) = self.to_host(&logits)?;
        let mut per_expert: Vec<Vec<(i32, f32)>> = vec![Vec::new(); e];
        for r in 0..x.rows {
            for (ex, p) in route(true, &lh[r * e..(r + 1) * e], w.top_k, w.norm_topk_prob) {
                per_expert[ex].push((r as i32, p as f32));
            }
        }
        let mut out = self.tensor("moe output", x.rows, x.cols)?;
        self.stream
            .memset_zeros(&mut *out.data)
            .map_err(err("moe output"))?;
        let width = x.cols as i32;
        for (ex, toks) in per_expert.iter().enumerate().filter(|(_, t)| !t.is_empty()) {
            let idx: Vec<i32> = toks.iter().map(|t| t.0).collect();
            let wts: Vec<f32> = toks.iter().map(|t| t.1).collect();
            let didx = self.ints(&self.pools.i32s, "moe indices", &idx, None)?;
            let dw = self.stream.clone_htod(&wts).map_err(err("moe weights"))?;
            let xe = self.tensor("moe gathered rows", idx.len(), x.cols)?;
            // SAFETY: every index is a row of x; xe holds idx.len() rows.
            unsafe {
                self.launch(
                    "gather_rows_bf16",
                    cfg((idx.len() as u32, 1, 1)),
                    &[&*x.data, &didx.ptr, &*xe.data, &width],
                )
            }?;
            let ew = &w.experts[ex];
            let h = self.swiglu(&self.linear(&xe, &ew.gate)?, &self.linear(&xe, &ew.up)?)?;
            let y = self.linear(&h, &ew.down)?;
            // SAFETY: y holds idx.len() rows; indices are distinct rows of out
            // (a token meets each expert at most once).
            unsafe {
                self.launch(
                    "moe_accumulate_bf16",
                    cfg((idx.len() as u32, 1, 1)),
                    &[&*out.data, &*y.data, &didx.ptr, &dw, &width],
                )
            }?;
        }
        Ok(out)
    }

    fn rows(&self, x: &CudaTensor, start: usize, n: usize) -> Result<CudaTensor> {
        if start + n > x.rows {
            return Err(shape(
                "rows",
                format!("rows {start}..{} of {}", start + n, x.rows),
            ));
        }
        let mut out = self.tensor("row slice", n, x.cols)?;
        self.stream
            .memcpy_dtod(
                &x.data.slice(start * x.cols..(start + n) * x.cols),
                &mut *out.data,
            )
            .map_err(err("row slice"))?;
        Ok(out)
    }

    fn activation_from_host(&self, data: &[f64], rows: usize, cols: usize) -> Result<CudaTensor> {
        if data.len() != rows * cols {
            return Err(shape(
                "activation_from_host",
                format!("{} values for {rows}x{cols}", data.len()),
            ));
        }
        self.no_host_transfer("an activation from the host")?;
        let bits: Vec<u16> = data.iter().map(|&v| bf16_bits(v as f32)).collect();
        let mut out = self.tensor("activation", rows, cols)?;
        self.stream
            .memcpy_htod(&bits, &mut *out.data)
            .map_err(err("activation to device"))?;
        Ok(out)
    }

    fn to_host(&self, x: &CudaTensor) -> Result<(Vec<f64>, [usize; 2])> {
        self.no_host_transfer("copying a tensor to the host")?;
        let bits = self.stream.clone_dtoh(&*x.data).map_err(err("to host"))?;
        let v = bits[..x.rows * x.cols]
            .iter()
            .map(|&b| f32::from_bits((b as u32) << 16) as f64)
            .collect();
        Ok((v, [x.rows, x.cols]))
    }

    fn argmax(&self, logits: &CudaTensor) -> Result<u32> {
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

    fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(err("synchronize"))
    }

    fn free_memory(&self) -> Option<usize> {
        let free = self.stream.context().mem_get_info().ok().map(|(f, _)| f)?;
        let limit = *self.memory_limit.lock().unwrap_or_else(|p| p.into_inner());
        Some(limit.map_or(free, |l| free.min(l)))
    }

    fn stage_step(&self, token: u32, position: usize) -> Result<()> {
        if !self.options().graphs {
            return Ok(());
        }
        let mut st = self.step.lock().unwrap_or_else(|p| p.into_inner());
        let StepInputs { ids, pos, .. } = &mut *st;
        self.stream
            .memcpy_htod(&[token], ids)
            .map_err(err("staging the step token"))?;
        self.stream
            .memcpy_htod(&[position as i32], pos)
            .map_err(err("staging the step position"))?;
        st.staged = Some((token, position));
        Ok(())
    }

    fn begin_step_capture(&self) -> Result<bool> {
        if !self.options().graphs {
            return Ok(false);
        }
        self.release_step();
        self.pools.set_recording(true);
        self.recording
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .active = true;
        self.stream
            .begin_capture(
                cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
            )
            .map_err(err("begin recording the decode step"))?;
        Ok(true)
    }

    fn end_step_capture(&self) -> Result<()> {
        let graph = self
            .stream
            .end_capture(cudarc::driver::sys::CUgraphInstantiate_flags(0));
        self.pools.set_recording(false);
        let mut rec = self.recording.lock().unwrap_or_else(|p| p.into_inner());
        rec.active = false;
        let graph = graph
            .map_err(err("end recording the decode step"))?
            .ok_or_else(|| Error::Backend {
                backend: "cuda",
                problem: "recording the decode step produced no graph".into(),
            })?;
        rec.step = Some(Recorded {
            graph,
            frozen: self.pools.freeze(),
        });
        Ok(())
    }

    fn replay_step(&self) -> Result<()> {
        let rec = self.recording.lock().unwrap_or_else(|p| p.into_inner());
        let step = rec.step.as_ref().ok_or_else(|| Error::Backend {
            backend: "cuda",
            problem: "no recorded decode step to replay".into(),
        })?;
        step.graph
            .launch()
            .map_err(err("replaying the decode step"))
    }

    fn cache_advance(&self, cache: &mut CudaCache, n: usize) {
        cache.len += n;
    }

    fn release_step(&self) {
        let old = self
            .recording
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .step
            .take();
        if let Some(r) = old {
            let _ = self.stream.synchronize();
            drop(r.graph);
            self.pools.thaw(r.frozen);
        }
    }
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        self.release_step();
    }
}

impl CudaBackend {
    /// Device-to-device copy bandwidth in GB/s, counting the bytes read and
    /// written: the median of `reps` copies of `bytes` (after one warm copy).
    pub fn copy_bandwidth(&self, bytes: usize, reps: usize) -> Result<f64> {
        let n = bytes / 2;
        let src = self
            .stream
            .alloc_zeros::<u16>(n)
            .map_err(err("bandwidth source"))?;
        let mut dst = self
            .stream
            .alloc_zeros::<u16>(n)
            .map_err(err("bandwidth destination"))?;
        let mut times = Vec::with_capacity(reps);
        for i in 0..=reps {
            self.synchronize()?;
            let t = std::time::Instant::now();
            self.stream
                .memcpy_dtod(&src, &mut dst)
                .map_err(err("bandwidth copy"))?;
            self.synchronize()?;
            if i > 0 {
                times.push(t.elapsed().as_secs_f64());
            }
        }
        times.sort_by(|a, b| a.total_cmp(b));
        Ok(2.0 * (2 * n) as f64 / times[times.len() / 2] / 1e9)
    }
}
