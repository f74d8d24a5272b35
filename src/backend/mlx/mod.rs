//! MLX backend (through `mlx-rs`), compiled in with the `mlx` feature.
//!
//! Without the feature `MlxBackend` is a stub with no values
//! (`backend::stub`) whose constructors report `Error::BackendNotCompiled`.
//! With it, every op is built
//! from MLX operations on `Device::cpu()` (Linux CI; macOS would reach Metal
//! through the same code, untested): bf16 weights and activations, 2-D
//! row-major tensors `[rows, cols]` as the `Backend` trait defines them.
//!
//! Invariants:
//! - Every tensor this backend hands out is a bf16 `mlx_rs::Array` of rank 2.
//! - MLX is lazy: ops only record a graph. `to_host` and `synchronize`
//!   evaluate every array produced since the last of them (so no work is left
//!   queued and the set of evaluated arrays does not depend on which one the
//!   caller reads first).
//! - The fused path (`fused_qkv`) is one function compiled by
//!   `mlx_rs::transforms::compile`, one per attention geometry; on a Mac's
//!   GPU (`MlxBackend::metal_gpu`, macOS only, untested) the packed matmul
//!   followed by one custom Metal kernel (`metal.rs`).
//!
//! docs/mlx.md describes the build, MLX's precision for bf16 inputs and the
//! measured parity and determinism figures.

#[cfg(feature = "mlx")]
mod backend;
#[cfg(feature = "mlx")]
mod cuda_kernel;
#[cfg(feature = "mlx")]
mod device;
#[cfg(feature = "mlx")]
mod fused;
#[cfg(all(feature = "mlx", any(target_os = "macos", feature = "mlx-metal-check")))]
mod metal;
#[cfg(feature = "mlx")]
mod moe;
#[cfg(feature = "mlx")]
mod open;
#[cfg(feature = "mlx")]
mod ops;

#[cfg(feature = "mlx")]
pub use backend::{MlxBackend, MlxCache, MlxTensor, MlxWeight};

/// Which of MLX's devices a backend computes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MlxDevice {
    Cpu,
    /// The GPU of a CUDA build (NVIDIA) or of a Metal build (macOS).
    Gpu,
}

impl MlxDevice {
    pub fn name(self) -> &'static str {
        match self {
            MlxDevice::Cpu => "cpu",
            MlxDevice::Gpu => "gpu",
        }
    }

    /// The backend identity of MLX on this device.
    pub fn kind(self) -> crate::ident::BackendKind {
        match self {
            MlxDevice::Cpu => crate::ident::BackendKind::Mlx,
            MlxDevice::Gpu => crate::ident::BackendKind::MlxGpu,
        }
    }
}

/// Where an MLX MoE layer picks its experts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MlxMoeRouting {
    /// The router's logits come to the host, which routes by the shared
    /// `backend::route` (bitwise the CPU reference's choice and weights)
    /// and runs each chosen expert's products: one host round trip per MoE
    /// layer, which also stalls the pipelined decode.
    Host,
    /// Softmax, top-k (ties to the lower expert) and renormalisation on the
    /// device in f32, the chosen experts' products gathered from the
    /// stacked expert weights (`gather_mm`) and added in ascending expert
    /// order: no host round trip. Weights may differ from the host's by a
    /// bf16 ulp where the f32 sums land near a rounding boundary.
    Device,
}

impl MlxMoeRouting {
    /// Device routing on a GPU, where host round trips cost the most (the
    /// 30B-A3B shape on an H200: 2.2x the graph path's decode, 3.1x the
    /// fused kernel's); host routing on the CPU device, where both give
    /// the same bits and host routing is the reference's own code.
    pub fn default_for(device: MlxDevice) -> Self {
        match device {
            MlxDevice::Cpu => MlxMoeRouting::Host,
            MlxDevice::Gpu => MlxMoeRouting::Device,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            MlxMoeRouting::Host => "host",
            MlxMoeRouting::Device => "device",
        }
    }
}

/// What MLX's fused attention-input path runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MlxFused {
    /// `transforms::compile` of the graph path's ops: what MLX engines call
    /// "fused", and what the published MLX measurements timed.
    Compiled,
    /// lockstep's CUDA kernels (`kernels/qkv_proj.cu`, `kernels/qk_norm_rope.cu`) through MLX's
    /// custom-kernel API: MLX's GPU device of a CUDA build only.
    Kernel,
}

impl MlxFused {
    pub fn name(self) -> &'static str {
        match self {
            MlxFused::Compiled => "compiled",
            MlxFused::Kernel => "kernel",
        }
    }
}

/// What the loaded libmlx was built for (asked of the library at run time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MlxBuild {
    /// The CPU device only (the `mlx-cpu` wheel).
    Cpu,
    /// A CUDA build (`mlx-cuda-13`): the GPU device is an NVIDIA GPU.
    Cuda,
    Metal,
}

impl MlxBuild {
    pub fn name(self) -> &'static str {
        match self {
            MlxBuild::Cpu => "cpu",
            MlxBuild::Cuda => "cuda",
            MlxBuild::Metal => "metal",
        }
    }
}

/// Deliberate defects for negative controls (tests prove a check can fail);
/// all off in normal use.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MlxFaults {
    /// The fused path rotates as if every position were this much further on.
    pub fused_rope_position_offset: usize,
    /// The pipelined decode embeds each deferred token this much further
    /// on (mod the vocabulary): the wrong token fed to the next step.
    pub pipelined_token_shift: u32,
}

#[cfg(not(feature = "mlx"))]
mod stub {
    use super::MlxFaults;
    use crate::error::{Error, Result};

    crate::backend::stub::not_compiled_backend!(
        /// This build has no MLX: `new` says so.
        MlxBackend
    );

    impl MlxBackend {
        pub fn new() -> Result<Self> {
            Self::on_device(super::MlxDevice::Cpu)
        }

        pub fn gpu() -> Result<Self> {
            Self::on_device(super::MlxDevice::Gpu)
        }

        pub fn on_device(device: super::MlxDevice) -> Result<Self> {
            Self::with_faults_on(device, MlxFaults::default())
        }

        pub fn with_faults(faults: MlxFaults) -> Result<Self> {
            Self::with_faults_on(super::MlxDevice::Cpu, faults)
        }

        pub fn with_faults_on(device: super::MlxDevice, _faults: MlxFaults) -> Result<Self> {
            Err(Error::BackendNotCompiled {
                backend: device.kind(),
            })
        }

        /// The device MLX runs on when none is asked for.
        pub fn default_device() -> super::MlxDevice {
            super::MlxDevice::Cpu
        }

        pub fn with_fused(self, _fused: super::MlxFused) -> Result<Self> {
            match self.never {}
        }

        pub fn set_fused(&self, _fused: super::MlxFused) -> Result<()> {
            match self.never {}
        }

        pub fn copy_bandwidth(&self, _bytes: usize, _reps: usize) -> Result<f64> {
            match self.never {}
        }

        pub fn fused(&self) -> super::MlxFused {
            match self.never {}
        }

        pub fn device(&self) -> super::MlxDevice {
            match self.never {}
        }

        pub fn set_pipelined(&self, _on: bool) {
            match self.never {}
        }

        pub fn pipelined(&self) -> bool {
            match self.never {}
        }

        pub fn set_moe_routing(&self, _routing: super::MlxMoeRouting) {
            match self.never {}
        }

        pub fn moe_routing(&self) -> super::MlxMoeRouting {
            match self.never {}
        }

        pub fn mlx_version(&self) -> &str {
            match self.never {}
        }
    }
}

#[cfg(not(feature = "mlx"))]
pub use stub::MlxBackend;
