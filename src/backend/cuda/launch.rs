//! How a kernel is launched. Every kernel goes through `launch`, so that
//! programmatic dependent launch and the error text are the same for all of
//! them; arguments travel as the 8-byte words CUDA copies parameters from
//! (`KernelArg`), which is why a launch is unsafe: nothing checks them
//! against the kernel's parameter list. The launch shapes here (`BLOCK`,
//! `cfg`, `per_group`) are the ones the kernels' indexing assumes.

use super::pool::Buf;
use super::CudaBackend;
use crate::error::{Error, Result};
use cudarc::driver::{
    sys, CudaFunction, CudaSlice, CudaStream, DevicePtr, DeviceRepr, DriverError, LaunchConfig,
};
use std::collections::BTreeMap;

pub(super) fn err(op: &str) -> impl Fn(DriverError) -> Error + '_ {
    move |e| Error::Backend {
        backend: crate::ident::BackendKind::Cuda,
        problem: format!("{op}: {e}"),
    }
}

pub(super) fn shape(op: &'static str, problem: String) -> Error {
    Error::Shape { op, problem }
}

pub(super) const BLOCK: u32 = 256;

/// Activation rows one GEMV pass takes (ROWS_PER_PASS in common.cuh).
pub(super) const ROWS_PER_PASS: usize = 8;

pub(super) fn grid_for(n: usize) -> u32 {
    n.div_ceil(BLOCK as usize) as u32
}

pub(super) fn loaded<'a>(
    functions: &'a BTreeMap<&'static str, CudaFunction>,
    name: &str,
) -> Result<&'a CudaFunction> {
    functions.get(name).ok_or_else(|| Error::Backend {
        backend: crate::ident::BackendKind::Cuda,
        problem: format!("kernel {name} is not loaded"),
    })
}

pub(super) fn cfg(grid: (u32, u32, u32)) -> LaunchConfig {
    LaunchConfig {
        grid_dim: grid,
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block per normalised group, as wide as the group up to 1024 threads
/// (a multiple of NORM_THREADS = 128, whose order the kernels' sums follow
/// whatever the block size).
pub(super) fn per_group(groups: usize, width: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (groups as u32, 1, 1),
        block_dim: (width.div_ceil(128).clamp(1, 8) as u32 * 128, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A kernel argument as the 8-byte word CUDA copies its parameter from:
/// device addresses whole, 4-byte scalars in the low half (little endian).
pub(super) trait KernelArg {
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
pub(super) struct DevArg<T: DeviceRepr> {
    pub(super) ptr: u64,
    pub(super) _keep: Option<Buf<T>>,
}

impl CudaBackend {
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
    pub(super) unsafe fn launch(
        &self,
        name: &'static str,
        cfg: LaunchConfig,
        args: &[&dyn KernelArg],
    ) -> Result<()> {
        let f = self.func(name)?;
        if self.omitted(name) {
            return Ok(());
        }
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
        .map_err(err(name))?;
        self.count_launch();
        Ok(())
    }

    /// One launch enqueued. Launches recorded into a captured step are
    /// taken back out when the capture ends and added at every replay
    /// (graphs.rs), so the count stays those run.
    pub(super) fn count_launch(&self) {
        self.launches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}
