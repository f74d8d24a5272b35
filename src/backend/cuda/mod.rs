//! CUDA backend through cudarc: kernels in `kernels/*.cu` compiled at run
//! time by NVRTC for the device's architecture, bf16 storage, f32
//! accumulation, cuBLAS for multi-row (prefill) products when it loads.
//! cudarc loads libcuda, NVRTC and cuBLAS at run time (`dynamic-loading`),
//! so the `cuda` feature builds on machines without CUDA; without a GPU,
//! `CudaBackend::new` returns an error that says why.
//!
//! Without the `cuda` feature the backend is a stub whose constructor reports
//! `BackendNotCompiled`.

#[cfg(feature = "cuda")]
mod attention;
#[cfg(feature = "cuda")]
mod buffers;
#[cfg(feature = "cuda")]
mod device;
#[cfg(feature = "cuda")]
mod graphs;
#[cfg(feature = "cuda")]
pub mod kernels;
#[cfg(feature = "cuda")]
mod launch;
#[cfg(feature = "cuda")]
mod linear;
#[cfg(feature = "cuda")]
mod moe;
#[cfg(feature = "cuda")]
mod pool;
#[cfg(feature = "cuda")]
mod qkv;
#[cfg(feature = "cuda")]
mod rowwise;
#[cfg(feature = "cuda")]
mod tensor;
#[cfg(feature = "cuda")]
pub use device::CudaBackend;
#[cfg(feature = "cuda")]
pub use tensor::{CudaCache, CudaTensor, CudaWeight};

/// How the graph path's reductions may be ordered (recorded in the
/// fingerprint; docs/cuda.md lists what each mode changes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReductionMode {
    /// Fixed order everywhere: the same bits on every run.
    #[default]
    Deterministic,
    /// Float atomics combine split-K partial sums of the decode products and
    /// split-KV partial attention outputs; cuBLAS may use atomics.
    Fast,
}

impl ReductionMode {
    pub fn name(self) -> &'static str {
        match self {
            ReductionMode::Deterministic => "deterministic",
            ReductionMode::Fast => "fast",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "deterministic" => Some(ReductionMode::Deterministic),
            "fast" => Some(ReductionMode::Fast),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CudaOptions {
    pub mode: ReductionMode,
    /// Record a dense model's decode step once and replay it (CUDA graphs).
    pub graphs: bool,
}

#[cfg(not(feature = "cuda"))]
mod stub {
    use super::CudaOptions;
    use crate::error::{Error, Result};

    pub struct CudaBackend {
        _private: (),
    }

    impl CudaBackend {
        pub fn new(_ordinal: usize) -> Result<Self> {
            Err(Error::BackendNotCompiled { backend: "cuda" })
        }

        pub fn with_options(_ordinal: usize, _options: CudaOptions) -> Result<Self> {
            Err(Error::BackendNotCompiled { backend: "cuda" })
        }
    }
}
#[cfg(not(feature = "cuda"))]
pub use stub::CudaBackend;
