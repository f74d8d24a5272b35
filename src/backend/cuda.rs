//! CUDA backend (cudarc + NVRTC kernels + cuBLAS). Not implemented in this
//! build yet: constructing it reports that clearly instead of panicking.

use crate::error::{Error, Result};

pub struct CudaBackend {
    _private: (),
}

impl CudaBackend {
    pub fn new(_ordinal: usize) -> Result<Self> {
        Err(Error::BackendNotCompiled { backend: "cuda" })
    }
}
