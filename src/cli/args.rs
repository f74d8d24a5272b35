//! Option values shared by several commands: each enumerated option is a
//! value enum that clap checks, mapped onto the library's own types (which
//! know nothing of the command line).

use lockstep::backend::cuda::{CudaOptions, Products, ReductionMode};
use lockstep::backend::mlx::{MlxDevice, MlxFused};
use lockstep::ident::{AttnPath, BackendKind, Numerics};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendArg {
    /// The CPU reference.
    Cpu,
    /// lockstep's own CUDA backend.
    Cuda,
    /// MLX (on its default device unless --device says: the GPU of a CUDA
    /// or Metal build of libmlx, else the CPU).
    Mlx,
    /// MLX on its GPU device.
    MlxGpu,
}

impl From<BackendArg> for BackendKind {
    fn from(b: BackendArg) -> Self {
        match b {
            BackendArg::Cpu => BackendKind::Cpu,
            BackendArg::Cuda => BackendKind::Cuda,
            BackendArg::Mlx => BackendKind::Mlx,
            BackendArg::MlxGpu => BackendKind::MlxGpu,
        }
    }
}

/// MLX's device, for `--backend mlx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceArg {
    Cpu,
    Gpu,
}

impl From<DeviceArg> for MlxDevice {
    fn from(d: DeviceArg) -> Self {
        match d {
            DeviceArg::Cpu => MlxDevice::Cpu,
            DeviceArg::Gpu => MlxDevice::Gpu,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NumericsArg {
    /// bf16 storage, f32 accumulation, rounded where transformers rounds.
    Bf16,
    /// f64 over the same weights: truth.
    F64,
}

impl From<NumericsArg> for Numerics {
    fn from(n: NumericsArg) -> Self {
        match n {
            NumericsArg::Bf16 => Numerics::Bf16,
            NumericsArg::F64 => Numerics::F64,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PathArg {
    /// q/k/v projections, q/k RMSNorm and RoPE as separate ops.
    Graph,
    /// One op: packed QKV projection + q/k RMSNorm + RoPE.
    Fused,
}

impl From<PathArg> for AttnPath {
    fn from(p: PathArg) -> Self {
        match p {
            PathArg::Graph => AttnPath::Graph,
            PathArg::Fused => AttnPath::Fused,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    /// Fixed reduction order everywhere: the same bits on every run.
    Deterministic,
    /// Float atomics in the decode products and split-KV attention.
    Fast,
}

impl From<ModeArg> for ReductionMode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::Deterministic => ReductionMode::Deterministic,
            ModeArg::Fast => ReductionMode::Fast,
        }
    }
}

/// Which units compute CUDA's deterministic products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProductsArg {
    /// Our CUDA-core GEMVs (the default: every committed CUDA result).
    CudaCores,
    /// Our tensor-core kernel, batch invariant at any batch size.
    TensorCores,
}

impl From<ProductsArg> for Products {
    fn from(p: ProductsArg) -> Self {
        match p {
            ProductsArg::CudaCores => Products::CudaCores,
            ProductsArg::TensorCores => Products::TensorCores,
        }
    }
}

/// Where MLX's MoE layers route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MlxMoeRoutingArg {
    /// On the host (the CPU reference's exact choice; one round trip a layer).
    Host,
    /// On the device (no round trip; gathered expert products).
    Device,
}

impl From<MlxMoeRoutingArg> for lockstep::backend::mlx::MlxMoeRouting {
    fn from(r: MlxMoeRoutingArg) -> Self {
        match r {
            MlxMoeRoutingArg::Host => Self::Host,
            MlxMoeRoutingArg::Device => Self::Device,
        }
    }
}

/// What MLX's fused path runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MlxFusedArg {
    /// The compiled op chain (what MLX engines call "fused").
    Compiled,
    /// lockstep's CUDA kernel (MLX's GPU of a CUDA build).
    Kernel,
}

impl From<MlxFusedArg> for MlxFused {
    fn from(f: MlxFusedArg) -> Self {
        match f {
            MlxFusedArg::Compiled => MlxFused::Compiled,
            MlxFusedArg::Kernel => MlxFused::Kernel,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOffArg {
    On,
    Off,
}

impl From<OnOffArg> for bool {
    fn from(g: OnOffArg) -> Self {
        g == OnOffArg::On
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LevelArg {
    /// Every row's logits of one teacher-forced pass.
    Logits,
    /// q, k, v of every layer from the same inputs.
    Op,
}

/// Where a command runs: a backend, MLX's device, the arithmetic, CUDA's
/// settings.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct TargetArgs {
    #[arg(long, value_enum, default_value = "cpu")]
    pub backend: BackendArg,
    /// MLX's device (with --backend mlx; default: the GPU of a CUDA or
    /// Metal build of libmlx, else the CPU).
    #[arg(long, value_enum)]
    pub device: Option<DeviceArg>,
    /// Arithmetic: bf16 (transformers-faithful) or f64 (truth; CPU only).
    #[arg(long, value_enum, default_value = "bf16")]
    pub numerics: NumericsArg,
    #[command(flatten)]
    pub cuda: CudaArgs,
}

impl TargetArgs {
    /// The target, or the option it cannot honour, named.
    pub fn target(self) -> lockstep::error::Result<lockstep::jobs::fixture::Target> {
        if self.backend != BackendArg::Cuda {
            for (given, option) in [
                (self.cuda.mode.is_some(), "--mode"),
                (self.cuda.cuda_graphs, "--cuda-graphs"),
                (self.cuda.products.is_some(), "--products"),
            ] {
                if given {
                    return Err(lockstep::error::Error::invalid(
                        option,
                        "is a setting of the CUDA backend (--backend cuda)",
                    ));
                }
            }
        }
        lockstep::jobs::fixture::Target::new(
            self.backend.into(),
            self.device.map(Into::into),
            self.numerics.into(),
            self.cuda.options(),
        )
    }
}

/// CUDA run settings (refused by the other backends).
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct CudaArgs {
    /// CUDA reduction mode of the graph path (default: deterministic).
    #[arg(long, value_enum)]
    pub mode: Option<ModeArg>,
    /// Record the decode step once and replay it (CUDA graphs; dense models).
    #[arg(long)]
    pub cuda_graphs: bool,
    /// Which units compute deterministic mode's products (default: CUDA
    /// cores).
    #[arg(long, value_enum)]
    pub products: Option<ProductsArg>,
}

impl CudaArgs {
    pub fn options(self) -> CudaOptions {
        CudaOptions {
            mode: self.mode.map_or(ReductionMode::Deterministic, Into::into),
            graphs: self.cuda_graphs,
            products: self.products.map_or(Products::CudaCores, Into::into),
        }
    }
}

/// Prints `v` as pretty JSON on stdout.
pub fn print_json(v: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("results serialise")
    );
}

/// The head of a run's text output: model, run and prompt.
pub fn print_run_head(fp: &lockstep::engine::record::Fingerprint, prompt: &[u32]) {
    println!("model    {} ({})", fp.model_origin, fp.model_hash);
    println!("run      {}", fp.label());
    println!("prompt   {prompt:?}");
}
