//! The fused attention-input path: one function compiled with
//! `mlx_rs::transforms::compile` that projects q, k and v with the packed
//! weight (one matmul), RMS-normalises q and k per head and applies RoPE.
//!
//! Compilation traces the function once per input shape and merges its
//! elementwise work (on the CPU into kernels MLX JIT-compiles with `g++`).
//! Everything that varies per call is an input array (activations, weights,
//! positions); only the geometry is captured, so one compiled function serves
//! every layer of a model.

use super::ops;
use crate::backend::AttnDims;
use mlx_rs::error::Exception;
use mlx_rs::ops::split_at_indices;
use mlx_rs::transforms::compile::compile;
use mlx_rs::Array;

type CompiledFn = Box<dyn for<'a> FnMut(&'a [Array]) -> Result<Vec<Array>, Exception>>;

/// Identifies a geometry: heads, kv heads, head_dim, eps and theta bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FusedKey(usize, usize, usize, u64, u64);

impl FusedKey {
    pub fn new(d: &AttnDims) -> Self {
        FusedKey(
            d.n_heads,
            d.n_kv_heads,
            d.head_dim,
            d.eps.to_bits(),
            d.rope_theta.to_bits(),
        )
    }
}

pub struct FusedQkv {
    f: CompiledFn,
}

impl FusedQkv {
    pub fn new(dims: &AttnDims) -> Self {
        let (qd, kd, hd) = (
            dims.q_dim() as i32,
            dims.kv_dim() as i32,
            dims.head_dim as i32,
        );
        let (eps, theta) = (dims.eps as f32, dims.rope_theta as f32);
        // Inputs: x [n, hidden], packed weight [qd + 2kd, hidden], q_norm [hd],
        // k_norm [hd], positions [n] (int32). Outputs: q, k, v.
        let f = move |args: &[Array]| -> Result<Vec<Array>, Exception> {
            let [x, w, q_norm, k_norm, positions] = args else {
                return Err(Exception::from("fused_qkv takes 5 arrays"));
            };
            let proj = ops::linear(x, w)?;
            let mut parts = split_at_indices(&proj, &[qd, qd + kd], 1)?.into_iter();
            let (Some(q), Some(k), Some(v)) = (parts.next(), parts.next(), parts.next()) else {
                return Err(Exception::from("fused_qkv: split gave fewer than 3 parts"));
            };
            let q = ops::rope(
                &ops::rms_norm_groups(&q, q_norm, eps)?,
                positions,
                hd,
                theta,
            )?;
            let k = ops::rope(
                &ops::rms_norm_groups(&k, k_norm, eps)?,
                positions,
                hd,
                theta,
            )?;
            Ok(vec![q, k, v])
        };
        FusedQkv {
            f: Box::new(compile(f, false)),
        }
    }

    /// Runs the compiled function on `[x, packed weight, q_norm, k_norm, positions]`.
    pub fn call(&mut self, args: &[Array]) -> Result<Vec<Array>, Exception> {
        (self.f)(args)
    }
}
