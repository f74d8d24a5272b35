//! The identities every result is keyed by: which backend computed it, in
//! which arithmetic, by which attention-input path. They are types so that a
//! comparison of identities is a comparison of enums, never of strings typed
//! by hand; each has one `name()`, which is also its serde form, so records,
//! fingerprints and goldens written before these types existed read the same.

use serde::{Deserialize, Serialize};

/// Which backend computed a result. MLX on its GPU device (CUDA or Metal)
/// is a backend of its own: its kernels, rounding and envelopes are not the
/// CPU device's, so its results, goldens and rows are kept apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum BackendKind {
    /// The plain-Rust reference (the oracle).
    #[serde(rename = "cpu")]
    Cpu,
    /// MLX on its CPU device.
    #[serde(rename = "mlx")]
    Mlx,
    /// MLX on its GPU device: a CUDA build on NVIDIA cards, Metal on macOS.
    #[serde(rename = "mlx-gpu")]
    MlxGpu,
    #[serde(rename = "cuda")]
    Cuda,
}

impl BackendKind {
    pub const ALL: [BackendKind; 4] = [
        BackendKind::Cpu,
        BackendKind::Mlx,
        BackendKind::MlxGpu,
        BackendKind::Cuda,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Cpu => "cpu",
            BackendKind::Mlx => "mlx",
            BackendKind::MlxGpu => "mlx-gpu",
            BackendKind::Cuda => "cuda",
        }
    }

    /// The cargo feature that compiles the backend in (`None`: always there).
    pub fn feature(self) -> Option<&'static str> {
        match self {
            BackendKind::Cpu => None,
            BackendKind::Mlx | BackendKind::MlxGpu => Some("mlx"),
            BackendKind::Cuda => Some("cuda"),
        }
    }

    /// Whether it computes on a GPU (its tests then take the GPU lock).
    pub fn on_gpu(self) -> bool {
        matches!(self, BackendKind::MlxGpu | BackendKind::Cuda)
    }
}

/// The arithmetic a backend performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Numerics {
    /// bf16 storage, f32 accumulation, rounding where transformers rounds.
    Bf16,
    /// Every operation in f64 over the same bf16 weights: truth.
    F64,
}

impl Numerics {
    pub const ALL: [Numerics; 2] = [Numerics::Bf16, Numerics::F64];

    pub fn name(self) -> &'static str {
        match self {
            Numerics::Bf16 => "bf16",
            Numerics::F64 => "f64",
        }
    }
}

/// How q, k and v reach attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttnPath {
    /// q/k/v projections, per-head RMSNorm of q and k, RoPE: each its own op.
    Graph,
    /// One op: packed-QKV projection + q/k RMSNorm + RoPE.
    Fused,
}

impl AttnPath {
    pub const ALL: [AttnPath; 2] = [AttnPath::Graph, AttnPath::Fused];

    pub fn name(self) -> &'static str {
        match self {
            AttnPath::Graph => "graph",
            AttnPath::Fused => "fused",
        }
    }
}

macro_rules! display_by_name {
    ($($t:ty),*) => {$(
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }
    )*};
}
display_by_name!(BackendKind, Numerics, AttnPath);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_identity_serialises_as_its_name() {
        for b in BackendKind::ALL {
            assert_eq!(serde_json::to_string(&b).unwrap(), format!("\"{b}\""));
        }
        for n in Numerics::ALL {
            assert_eq!(serde_json::to_string(&n).unwrap(), format!("\"{n}\""));
        }
        for p in AttnPath::ALL {
            assert_eq!(serde_json::to_string(&p).unwrap(), format!("\"{p}\""));
            let back: AttnPath = serde_json::from_str(&format!("\"{}\"", p.name())).unwrap();
            assert_eq!(back, p);
        }
    }
}
