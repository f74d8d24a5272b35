//! What a backend is in a build without its feature: a type with no values.
//! Its constructors return `Error::BackendNotCompiled`, and every other
//! method is unreachable because no value of the type can exist; so the
//! jobs, the command line and the tests are written once against the real
//! backend's API, with no `cfg` of their own. (candle's
//! `dummy_cuda_backend.rs` is the model; an uninhabited type lets the
//! compiler prove the methods are never called.)

/// The contents of a stub backend, and its tensor, weight and cache types.
pub enum Never {}

/// Declares `$name` as a stub backend: the `Backend` trait over `Never`. The module that uses it writes the constructors.
macro_rules! not_compiled_backend {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        pub struct $name {
            pub(crate) never: $crate::backend::stub::Never,
        }

        impl $crate::backend::Backend for $name {
            type Tensor = $crate::backend::stub::Never;
            type Weight = $crate::backend::stub::Never;
            type Cache = $crate::backend::stub::Never;
            fn device_info(&self) -> $crate::backend::DeviceInfo {
                match self.never {}
            }
            fn kind(&self) -> $crate::backend::BackendKind {
                match self.never {}
            }
            fn numerics(&self) -> $crate::backend::Numerics {
                match self.never {}
            }
            fn upload(
                &self,
                _: &str,
                _: &$crate::model::safetensors::HostTensor,
            ) -> $crate::error::Result<Self::Weight> {
                match self.never {}
            }
            fn upload_packed(
                &self,
                _: &str,
                _: &[&$crate::model::safetensors::HostTensor],
            ) -> $crate::error::Result<Self::Weight> {
                match self.never {}
            }
            fn embed(&self, _: &Self::Weight, _: &[u32]) -> $crate::error::Result<Self::Tensor> {
                match self.never {}
            }
            fn rms_norm(
                &self,
                _: &Self::Tensor,
                _: &Self::Weight,
                _: f64,
            ) -> $crate::error::Result<Self::Tensor> {
                match self.never {}
            }
            fn linear(
                &self,
                _: &Self::Tensor,
                _: &Self::Weight,
            ) -> $crate::error::Result<Self::Tensor> {
                match self.never {}
            }
            fn rope(
                &self,
                _: &Self::Tensor,
                _: &[usize],
                _: usize,
                _: f64,
            ) -> $crate::error::Result<Self::Tensor> {
                match self.never {}
            }
            fn fused_qkv(
                &self,
                _: &Self::Tensor,
                _: &Self::Weight,
                _: &Self::Weight,
                _: &Self::Weight,
                _: &$crate::backend::AttnDims,
                _: &[usize],
            ) -> $crate::error::Result<(Self::Tensor, Self::Tensor, Self::Tensor)> {
                match self.never {}
            }
            fn new_cache(
                &self,
                _: &$crate::backend::AttnDims,
                _: usize,
            ) -> $crate::error::Result<Self::Cache> {
                match self.never {}
            }
            fn cache_append(
                &self,
                _: &mut Self::Cache,
                _: &Self::Tensor,
                _: &Self::Tensor,
            ) -> $crate::error::Result<()> {
                match self.never {}
            }
            fn attention(
                &self,
                _: &Self::Tensor,
                _: &Self::Cache,
                _: &$crate::backend::AttnDims,
                _: &[usize],
            ) -> $crate::error::Result<Self::Tensor> {
                match self.never {}
            }
            fn add(&self, _: &Self::Tensor, _: &Self::Tensor) -> $crate::error::Result<Self::Tensor> {
                match self.never {}
            }
            fn swiglu(
                &self,
                _: &Self::Tensor,
                _: &Self::Tensor,
            ) -> $crate::error::Result<Self::Tensor> {
                match self.never {}
            }
            fn moe(
                &self,
                _: &Self::Tensor,
                _: &$crate::backend::MoeWeights<Self::Weight>,
            ) -> $crate::error::Result<Self::Tensor> {
                match self.never {}
            }
            fn rows(&self, _: &Self::Tensor, _: usize, _: usize) -> $crate::error::Result<Self::Tensor> {
                match self.never {}
            }
            fn activation_from_host(
                &self,
                _: &[f64],
                _: usize,
                _: usize,
            ) -> $crate::error::Result<Self::Tensor> {
                match self.never {}
            }
            fn to_host(&self, _: &Self::Tensor) -> $crate::error::Result<(Vec<f64>, [usize; 2])> {
                match self.never {}
            }
            fn synchronize(&self) -> $crate::error::Result<()> {
                match self.never {}
            }
        }
    };
}

// Unused in a build with every backend compiled.
#[allow(unused_imports)]
pub(crate) use not_compiled_backend;
