//! CUDA backend through cudarc: kernels in `kernels/*.cu` compiled at run
//! time by NVRTC for the device's architecture, bf16 storage, f32
//! accumulation, cuBLAS for multi-row (prefill) products when it loads.
//! cudarc loads libcuda, NVRTC and cuBLAS at run time (`dynamic-loading`),
//! so the `cuda` feature builds on machines without CUDA; without a GPU,
//! `CudaBackend::new` returns an error that says why.
//!
//! Without the `cuda` feature `CudaBackend` is a stub with no values
//! (`backend::stub`) whose constructors report `BackendNotCompiled`.

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReductionMode {
    /// Fixed order everywhere: the same bits on every run.
    #[default]
    Deterministic,
    /// Float atomics combine split-K partial sums of the decode products and
    /// split-KV partial attention outputs; cuBLAS may use atomics.
    Fast,
}

impl ReductionMode {
    pub const ALL: [ReductionMode; 2] = [ReductionMode::Deterministic, ReductionMode::Fast];

    pub const fn name(self) -> &'static str {
        match self {
            ReductionMode::Deterministic => "deterministic",
            ReductionMode::Fast => "fast",
        }
    }
}

impl std::fmt::Display for ReductionMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which units compute a deterministic step's products with a weight
/// (recorded in the fingerprint as `products`: the two give different
/// bits, each fixed run to run and batch invariant; docs/batching.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Products {
    /// Our CUDA-core GEMVs: the bits every committed CUDA result was
    /// measured with. Batched steps past eight rows pay for the invariance
    /// in instructions (gemv_many_bf16).
    #[default]
    CudaCores,
    /// Our tensor-core kernel (linear_tc.cu) for every decode product of
    /// any batch size, batch 1 included, so a sequence alone and in a batch
    /// share its order; products whose inputs are not a multiple of 32
    /// keep the GEMVs. Deterministic mode only.
    TensorCores,
}

impl Products {
    pub const fn name(self) -> &'static str {
        match self {
            Products::CudaCores => "cuda-cores",
            Products::TensorCores => "tensor-cores",
        }
    }
}

/// The kernel families of a decode step. `lockstep bench --split` times a
/// recorded step with one family left out (`omit_from_recorded_steps`) to
/// measure what that family costs inside the step, launch gaps and overlap
/// included, which Nsight Compute, timing kernels one at a time, cannot.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum KernelFamily {
    /// The token's embedding row (embed.cu).
    Embed,
    /// RMSNorm and the residual add + RMSNorm (rms_norm.cu).
    Norm,
    /// Products with a weight, the gate + up + SwiGLU pass among them
    /// (linear.cu, linear_tc.cu).
    Products,
    /// The fused path's QKV op (qkv_fused.cu).
    QkvFused,
    /// The graph path's rotation (rope.cu).
    Rope,
    /// The graph path's KV-cache append (cache.cu).
    Cache,
    /// Attention over the cache (attention.cu).
    Attention,
    /// The greedy pick (argmax in linear.cu).
    Argmax,
    /// Elementwise adds and SwiGLU (elementwise.cu).
    Elementwise,
    /// MoE routing and experts (moe.cu).
    Moe,
}

impl KernelFamily {
    pub const ALL: [KernelFamily; 10] = [
        KernelFamily::Embed,
        KernelFamily::Norm,
        KernelFamily::Products,
        KernelFamily::QkvFused,
        KernelFamily::Rope,
        KernelFamily::Cache,
        KernelFamily::Attention,
        KernelFamily::Argmax,
        KernelFamily::Elementwise,
        KernelFamily::Moe,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            KernelFamily::Embed => "embed",
            KernelFamily::Norm => "norm",
            KernelFamily::Products => "products",
            KernelFamily::QkvFused => "qkv-fused",
            KernelFamily::Rope => "rope",
            KernelFamily::Cache => "cache",
            KernelFamily::Attention => "attention",
            KernelFamily::Argmax => "argmax",
            KernelFamily::Elementwise => "elementwise",
            KernelFamily::Moe => "moe",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CudaOptions {
    pub mode: ReductionMode,
    /// Record a dense model's decode step once and replay it (CUDA graphs).
    pub graphs: bool,
    pub products: Products,
}

impl CudaOptions {
    /// The options, or the combination they cannot make named: fast mode
    /// keeps its own products.
    pub fn checked(self) -> crate::error::Result<Self> {
        if self.mode == ReductionMode::Fast && self.products == Products::TensorCores {
            return Err(crate::error::Error::invalid(
                "products",
                "tensor-core products are a deterministic-mode setting (fast mode keeps its own products)",
            ));
        }
        Ok(self)
    }
}

/// A defect planted in one kernel family by rewriting its source before
/// NVRTC compiles it (negative controls only: `verify`'s rows must catch
/// each; tests/cuda_backend.rs). Recorded in the fingerprint as
/// `planted_fault`. Each names the families a decode step runs, so that a
/// bug in a decode-only specialisation has a control too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CudaFault {
    /// The single-row fused QKV kernels (a decode step's fused path)
    /// normalise k with the q-norm weight.
    DecodeFusedKNorm,
    /// The single-row products (a decode step's q, k, v on the graph path,
    /// o and the MLP on both) leave out each row's last 8 inputs.
    DecodeGemvDropsTail,
    /// Decode attention leaves out the newest key.
    DecodeAttentionDropsNewest,
    /// The graph path's RoPE rotates every row one position too far.
    RopePositionOffset,
    /// The KV-cache append stores k where v belongs.
    CacheAppendStoresKAsV,
    /// The MoE router sends each chosen slot to the next expert.
    MoeRouteNextExpert,
    /// A deterministic batched decode step's products sum the rows past
    /// the first eight in another order (one warp striding over single
    /// inputs): a split that follows the batch size, which a sequence sees
    /// as bits that depend on its companions.
    BatchedGemvSplitFollowsBatch,
    /// The tensor-core products sum each 32-input chunk apart and then add
    /// it, for activation rows past the first eight: another batch-
    /// dependent order, in the kernel that runs with tensor-core products.
    TensorCoreOrderFollowsBatch,
}

impl CudaFault {
    pub const ALL: [CudaFault; 8] = [
        CudaFault::DecodeFusedKNorm,
        CudaFault::DecodeGemvDropsTail,
        CudaFault::DecodeAttentionDropsNewest,
        CudaFault::RopePositionOffset,
        CudaFault::CacheAppendStoresKAsV,
        CudaFault::MoeRouteNextExpert,
        CudaFault::BatchedGemvSplitFollowsBatch,
        CudaFault::TensorCoreOrderFollowsBatch,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CudaFault::DecodeFusedKNorm => "decode-fused-k-norm",
            CudaFault::DecodeGemvDropsTail => "decode-gemv-drops-tail",
            CudaFault::DecodeAttentionDropsNewest => "decode-attention-drops-newest",
            CudaFault::RopePositionOffset => "rope-position-offset",
            CudaFault::CacheAppendStoresKAsV => "cache-append-stores-k-as-v",
            CudaFault::MoeRouteNextExpert => "moe-route-next-expert",
            CudaFault::BatchedGemvSplitFollowsBatch => "batched-gemv-split-follows-batch",
            CudaFault::TensorCoreOrderFollowsBatch => "tensor-core-order-follows-batch",
        }
    }

    /// The settings under which the faulty kernel runs.
    pub fn options(self) -> CudaOptions {
        match self {
            CudaFault::TensorCoreOrderFollowsBatch => CudaOptions {
                products: Products::TensorCores,
                ..CudaOptions::default()
            },
            _ => CudaOptions::default(),
        }
    }
}

#[cfg(not(feature = "cuda"))]
mod stub {
    use super::CudaOptions;
    use crate::backend::BackendKind;
    use crate::error::{Error, Result};

    crate::backend::stub::not_compiled_backend!(
        /// This build has no CUDA: the constructors say so.
        CudaBackend
    );

    impl CudaBackend {
        pub fn new(ordinal: usize) -> Result<Self> {
            Self::with_options(ordinal, CudaOptions::default())
        }

        pub fn with_options(_ordinal: usize, _options: CudaOptions) -> Result<Self> {
            Err(Error::BackendNotCompiled {
                backend: BackendKind::Cuda,
            })
        }

        pub fn with_fault(
            _ordinal: usize,
            _options: CudaOptions,
            _fault: super::CudaFault,
        ) -> Result<Self> {
            Err(Error::BackendNotCompiled {
                backend: BackendKind::Cuda,
            })
        }

        pub fn options(&self) -> CudaOptions {
            match self.never {}
        }

        pub fn set_options(&self, _options: CudaOptions) -> Result<()> {
            match self.never {}
        }

        pub fn set_memory_limit(&self, _bytes: Option<usize>) {
            match self.never {}
        }

        pub fn copy_bandwidth(&self, _bytes: usize, _reps: usize) -> Result<f64> {
            match self.never {}
        }

        pub fn omit_from_recorded_steps(&self, _family: Option<super::KernelFamily>) {
            match self.never {}
        }
    }
}
#[cfg(not(feature = "cuda"))]
pub use stub::CudaBackend;
