//! Opening an MLX backend: on which device (asked of the loaded libmlx,
//! `device.rs`), what its fused path runs (`MlxFused`), and the fingerprint
//! that records both. Separate from the ops so that `backend.rs` holds what
//! computes and this file what decides where.

use super::backend::{MlxBackend, OrBackendError};
use super::cuda_kernel::QkNormRopeCuda;
use super::device::{check_version, gpu_properties, loaded_build, loaded_mlx_version, PINNED_MLX};
use super::{MlxBuild, MlxDevice, MlxFaults, MlxFused};
use crate::backend::{Backend, BackendKind, DeviceInfo};
use crate::error::{Error, Result};
use mlx_rs::Stream;
use std::cell::RefCell;
use std::collections::BTreeMap;

/// MLX fuses the elementwise parts of a compiled function on the CPU only
/// when it can run `g++` (it JIT-compiles the fused kernels); otherwise it
/// runs them unfused. Part of the fingerprint since it could change results.
fn cpu_jit_available() -> bool {
    std::process::Command::new("g++")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

impl MlxBackend {
    /// A backend on MLX's default CPU stream.
    pub fn new() -> Result<Self> {
        Self::on_device(MlxDevice::Cpu)
    }

    /// A backend on MLX's default GPU stream: refused, saying why, when the
    /// loaded libmlx has no GPU backend or no GPU is there.
    pub fn gpu() -> Result<Self> {
        Self::on_device(MlxDevice::Gpu)
    }

    pub fn on_device(device: MlxDevice) -> Result<Self> {
        Self::with_faults_on(device, MlxFaults::default())
    }

    /// The device MLX runs on when none is asked for: the GPU of a CUDA or
    /// Metal build of libmlx, else the CPU.
    pub fn default_device() -> MlxDevice {
        match loaded_build() {
            MlxBuild::Cpu => MlxDevice::Cpu,
            MlxBuild::Cuda | MlxBuild::Metal => MlxDevice::Gpu,
        }
    }

    /// A CPU backend with planted defects (negative controls only).
    pub fn with_faults(faults: MlxFaults) -> Result<Self> {
        Self::with_faults_on(MlxDevice::Cpu, faults)
    }

    pub fn with_faults_on(device: MlxDevice, faults: MlxFaults) -> Result<Self> {
        let version = loaded_mlx_version();
        check_version(&version, PINNED_MLX).map_err(|problem| Error::Backend {
            backend: device.kind(),
            problem,
        })?;
        let build = loaded_build();
        let (stream, gpu) = match device {
            MlxDevice::Cpu => (Stream::cpu(), BTreeMap::new()),
            MlxDevice::Gpu => {
                if build == MlxBuild::Cpu {
                    return Err(Error::Unavailable {
                        backend: BackendKind::MlxGpu,
                        problem: format!(
                            "the loaded libmlx {version} is a CPU-only build (no CUDA or Metal); \
                             point LD_LIBRARY_PATH at a CUDA build of the same version (docs/mlx.md)"
                        ),
                    });
                }
                let gpu = gpu_properties();
                if gpu.is_empty() {
                    return Err(Error::Unavailable {
                        backend: BackendKind::MlxGpu,
                        problem: format!(
                            "the loaded libmlx {version} is a {} build but reports no GPU 0",
                            build.name()
                        ),
                    });
                }
                (Stream::gpu(), gpu)
            }
        };
        // On a CUDA GPU the fused path is lockstep's kernel; `set_fused`
        // picks the compiled chain instead.
        let cuda_kernel = match (device, build) {
            (MlxDevice::Gpu, MlxBuild::Cuda) => {
                Some(QkNormRopeCuda::new().or_err(BackendKind::MlxGpu, "cuda kernel")?)
            }
            _ => None,
        };
        let fused_with = std::cell::Cell::new(match cuda_kernel {
            Some(_) => MlxFused::Kernel,
            None => MlxFused::Compiled,
        });
        Ok(MlxBackend {
            stream,
            device,
            build,
            gpu,
            cuda_kernel,
            fused_with,
            pipelined: std::cell::Cell::new(true),
            moe_routing: std::cell::Cell::new(super::MlxMoeRouting::default_for(device)),
            faults,
            fused: RefCell::new(BTreeMap::new()),
            pending: RefCell::new(Vec::new()),
            routing_log: RefCell::new(None),
            mlx_version: version,
            #[cfg(any(target_os = "macos", feature = "mlx-metal-check"))]
            metal: None,
        })
    }

    /// A backend on MLX's GPU stream (Metal) whose fused path is the custom
    /// Metal kernel of `metal.rs`. UNTESTED: written and type-checked on
    /// Linux, never run (docs/mlx.md).
    #[cfg(any(target_os = "macos", feature = "mlx-metal-check"))]
    pub fn metal_gpu() -> Result<Self> {
        let kernel =
            super::metal::QkNormRopeKernel::new().or_err(BackendKind::MlxGpu, "metal kernel")?;
        Ok(MlxBackend {
            metal: Some(kernel),
            ..Self::gpu()?
        })
    }

    /// Makes the fused path run `fused`: the compiled chain anywhere,
    /// lockstep's CUDA kernel on MLX's GPU of a CUDA build only (refused
    /// elsewhere, saying why).
    pub fn set_fused(&self, fused: MlxFused) -> Result<()> {
        if fused == MlxFused::Kernel && self.cuda_kernel.is_none() {
            return Err(Error::Backend {
                backend: self.kind(),
                problem: format!(
                    "the fused CUDA kernel needs MLX's GPU device of a CUDA build; this backend is on {} of a {} build",
                    self.device.name(),
                    self.build.name()
                ),
            });
        }
        self.fused_with.set(fused);
        Ok(())
    }

    /// This backend with its fused path running `fused` (`set_fused`).
    pub fn with_fused(self, fused: MlxFused) -> Result<Self> {
        self.set_fused(fused)?;
        Ok(self)
    }

    /// The MLX device this backend runs on.
    pub fn device(&self) -> MlxDevice {
        self.device
    }

    /// What the fused path runs.
    pub fn fused(&self) -> MlxFused {
        self.fused_with.get()
    }

    /// Whether greedy decode queues step i+1 on the device before the host
    /// reads token i (on by default; off decodes one step after another,
    /// for comparison). The tokens are the same either way.
    pub fn set_pipelined(&self, on: bool) {
        self.pipelined.set(on);
    }

    /// Where MoE layers route (host by default: the CPU reference's exact
    /// choice and weights).
    pub fn set_moe_routing(&self, routing: super::MlxMoeRouting) {
        self.moe_routing.set(routing);
    }

    pub fn moe_routing(&self) -> super::MlxMoeRouting {
        self.moe_routing.get()
    }

    pub fn pipelined(&self) -> bool {
        self.pipelined.get()
    }

    /// Streaming bandwidth of MLX's device in GB/s: (read + write bytes) /
    /// time of an elementwise op over `bytes` of bf16, median of `reps`
    /// after a warm-up. An MLX op, not a driver copy, so it is what MLX's
    /// own kernels can move (the roofline of `lockstep bench --backend mlx`).
    pub fn copy_bandwidth(&self, bytes: usize, reps: usize) -> Result<f64> {
        let n = i32::try_from(bytes / 2).map_err(|_| Error::Backend {
            backend: self.kind(),
            problem: format!("{bytes} bytes do not fit MLX's 32-bit shapes"),
        })?;
        let a = self.on("bandwidth source", || {
            let a = mlx_rs::ops::zeros_dtype(&[n], mlx_rs::Dtype::Bfloat16)?;
            a.eval()?;
            Ok(a)
        })?;
        let two = mlx_rs::Array::from_f32(2.0)
            .as_dtype(mlx_rs::Dtype::Bfloat16)
            .or_err(self.kind(), "bandwidth")?;
        let mut times = Vec::with_capacity(reps);
        for i in 0..=reps {
            let t = std::time::Instant::now();
            self.on("bandwidth op", || {
                let b = a.multiply(&two)?;
                b.eval()
            })?;
            if i > 0 {
                times.push(t.elapsed().as_secs_f64());
            }
        }
        times.sort_by(|a, b| a.total_cmp(b));
        Ok(2.0 * (2 * n as usize) as f64 / times[times.len() / 2] / 1e9)
    }

    /// Whether the fused path runs as the Metal kernel.
    #[cfg(any(target_os = "macos", feature = "mlx-metal-check"))]
    fn on_metal(&self) -> bool {
        self.metal.is_some()
    }

    #[cfg(not(any(target_os = "macos", feature = "mlx-metal-check")))]
    fn on_metal(&self) -> bool {
        false
    }

    /// The MLX version reported by the loaded library.
    pub fn mlx_version(&self) -> &str {
        &self.mlx_version
    }

    /// The fingerprint: where and how this backend computes.
    pub(super) fn describe(&self) -> DeviceInfo {
        let mut details = BTreeMap::new();
        details.insert("arch".into(), std::env::consts::ARCH.into());
        details.insert("mlx".into(), self.mlx_version.clone());
        details.insert("mlx-c".into(), "0.7.0".into());
        details.insert("mlx-rs".into(), "0.33.0".into());
        details.insert("mlx_device".into(), self.device.name().into());
        details.insert("mlx_build".into(), self.build.name().into());
        for (k, v) in &self.gpu {
            details.insert(format!("gpu_{k}"), v.clone());
        }
        details.insert(
            "matmul".into(),
            match self.device {
                MlxDevice::Cpu => "MLX CPU simd_gemm: bf16 inputs, f32 accumulation in 16-wide k blocks, one rounding".into(),
                MlxDevice::Gpu => format!("MLX's {} GPU matmul, bf16 in and out", self.build.name()),
            },
        );
        details.insert(
            "fused".into(),
            if self.on_metal() {
                "packed matmul + Metal kernel lockstep_qk_norm_rope (untested)".into()
            } else if self.fused_with.get() == MlxFused::Kernel {
                "lockstep's CUDA kernels lockstep_qkv_proj + lockstep_qk_norm_rope (mlx/kernels/*.cu, common.cuh) through mlx_fast_cuda_kernel".into()
            } else {
                "transforms::compile(packed matmul + fast::rms_norm + fast::rope)".into()
            },
        );
        if self.device == MlxDevice::Cpu {
            details.insert(
                "compile_cpu_jit".into(),
                if cpu_jit_available() {
                    "g++ (elementwise fusion on)".into()
                } else {
                    "none (elementwise fusion off)".into()
                },
            );
        }
        details.insert("moe_routing".into(), self.moe_routing.get().name().into());
        if self.faults != MlxFaults::default() {
            details.insert("faults".into(), format!("{:?}", self.faults));
        }
        DeviceInfo {
            backend: self.kind(),
            device: match self.device {
                MlxDevice::Cpu => format!("MLX cpu: {}", crate::backend::host_cpu_name()),
                MlxDevice::Gpu => format!(
                    "MLX gpu ({}): {}",
                    self.build.name(),
                    self.gpu
                        .get("device_name")
                        .map_or("unnamed", String::as_str)
                ),
            },
            numerics: crate::ident::Numerics::Bf16,
            details,
        }
    }
}
