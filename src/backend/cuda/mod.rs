//! CUDA backend through cudarc: kernels in `kernels/*.cu` compiled at run
//! time by NVRTC for the device's architecture, bf16 storage, f32
//! accumulation. cudarc loads libcuda and NVRTC at run time
//! (`dynamic-loading`), so the `cuda` feature builds on machines without
//! CUDA; without a GPU, `CudaBackend::new` returns an error that says why.
//!
//! Without the `cuda` feature the backend is a stub whose constructor reports
//! `BackendNotCompiled`.

#[cfg(feature = "cuda")]
mod device;
#[cfg(feature = "cuda")]
pub mod kernels;
#[cfg(feature = "cuda")]
pub use device::{CudaBackend, CudaCache, CudaTensor, CudaWeight};

#[cfg(not(feature = "cuda"))]
mod stub {
    use crate::error::{Error, Result};

    pub struct CudaBackend {
        _private: (),
    }

    impl CudaBackend {
        pub fn new(_ordinal: usize) -> Result<Self> {
            Err(Error::BackendNotCompiled { backend: "cuda" })
        }
    }
}
#[cfg(not(feature = "cuda"))]
pub use stub::CudaBackend;
