//! The fused QK-norm + RoPE step as one custom CUDA kernel of MLX's CUDA
//! build (`mlx_fast_cuda_kernel_*` of mlx-c 0.7.0; mlx-rs 0.33 wraps only
//! the Metal counterpart, so the calls go to `mlx_sys` directly).
//!
//! The body is `kernels/qk_norm_rope.cu`; its header is the CUDA backend's
//! own `common.cuh`, so the projection sums as lockstep's CUDA kernels do.
//! MLX compiles the kernel with NVRTC when its outputs are first evaluated
//! (errors, with NVRTC's log, surface from evaluation) and caches it per
//! name and template arguments, i.e. per geometry.
//!
//! Invariants the caller (`MlxBackend::fused_qkv`) has checked: `x` has `n`
//! rows of `hidden`, the packed weight `(heads + 2 kv_heads) * head_dim`
//! rows of `hidden`, both norm weights `head_dim` values, head_dim is even
//! and at most 256, hidden is a multiple of 8 (16-byte chunks), `positions`
//! has `n` int32 values, and `n > 0`.

use crate::backend::AttnDims;
use mlx_rs::error::Exception;
use mlx_rs::{Array, Stream};
use std::ffi::{c_char, CString};

const SOURCE: &str = include_str!("kernels/qk_norm_rope.cu");
const HEADER: &str = include_str!("../cuda/kernels/common.cuh");
const INPUTS: [&str; 6] = ["x", "w", "q_norm", "k_norm", "positions", "params"];
const OUTPUTS: [&str; 3] = ["q", "k", "v"];
/// Threads per block: 8 warps (the body's projection loop steps by 8).
const BLOCK: i32 = 256;

fn c_string(s: &str) -> Result<CString, Exception> {
    CString::new(s).map_err(|_| Exception::custom("a kernel string holds a NUL byte"))
}

fn check(status: i32, what: &str) -> Result<(), Exception> {
    match status {
        0 => Ok(()),
        _ => Err(Exception::custom(format!(
            "mlx_fast_cuda_kernel: {what} failed"
        ))),
    }
}

/// An mlx-c string vector, freed on drop.
struct Names(mlx_sys::mlx_vector_string);

impl Names {
    fn new(names: &[&str]) -> Result<Self, Exception> {
        let owned = names
            .iter()
            .map(|n| c_string(n))
            .collect::<Result<Vec<_>, _>>()?;
        let mut ptrs: Vec<*const c_char> = owned.iter().map(|s| s.as_ptr()).collect();
        // SAFETY: `ptrs` holds `ptrs.len()` valid C strings for the call;
        // mlx-c copies them into the vector it returns.
        Ok(Names(unsafe {
            mlx_sys::mlx_vector_string_new_data(ptrs.as_mut_ptr(), ptrs.len())
        }))
    }
}

impl Drop for Names {
    fn drop(&mut self) {
        // SAFETY: created by mlx_vector_string_new_data and freed once.
        unsafe { mlx_sys::mlx_vector_string_free(self.0) };
    }
}

/// A launch configuration, freed on drop.
struct Config(mlx_sys::mlx_fast_cuda_kernel_config);

impl Drop for Config {
    fn drop(&mut self) {
        // SAFETY: created by mlx_fast_cuda_kernel_config_new and freed once.
        unsafe { mlx_sys::mlx_fast_cuda_kernel_config_free(self.0) };
    }
}

pub struct QkNormRopeCuda {
    kernel: mlx_sys::mlx_fast_cuda_kernel,
}

impl QkNormRopeCuda {
    pub fn new() -> Result<Self, Exception> {
        let (name, source, header) = (
            c_string("lockstep_qk_norm_rope")?,
            c_string(SOURCE)?,
            c_string(HEADER)?,
        );
        let (inputs, outputs) = (Names::new(&INPUTS)?, Names::new(&OUTPUTS)?);
        // SAFETY: every argument is valid for the call; mlx-c copies the
        // strings and vectors into the kernel object it returns.
        let kernel = unsafe {
            mlx_sys::mlx_fast_cuda_kernel_new(
                name.as_ptr(),
                inputs.0,
                outputs.0,
                source.as_ptr(),
                header.as_ptr(),
                // The body indexes rows as contiguous; MLX copies otherwise.
                true,
                0,
            )
        };
        if kernel.ctx.is_null() {
            return Err(Exception::custom("mlx_fast_cuda_kernel_new failed"));
        }
        Ok(QkNormRopeCuda { kernel })
    }

    /// q, k, v (bf16) from `[x [n, hidden], the packed weight, q_norm,
    /// k_norm, positions [n] (int32)]` (norm weights flat), on `stream` (a
    /// GPU stream).
    pub fn apply(
        &self,
        [x, w, q_norm, k_norm, positions]: [&Array; 5],
        dims: &AttnDims,
        stream: &Stream,
    ) -> Result<Vec<Array>, Exception> {
        let (n, hidden) = (x.dim(0), x.dim(1));
        let (nh, nkv, hd) = (
            dims.n_heads as i32,
            dims.n_kv_heads as i32,
            dims.head_dim as i32,
        );
        let params = Array::from_slice(&[dims.eps as f32, dims.rope_theta as f32], &[2]);
        // SAFETY: a fresh config; each call below passes it and valid
        // arguments (C strings live for the call, shapes point at 2 ints).
        let config = Config(unsafe { mlx_sys::mlx_fast_cuda_kernel_config_new() });
        for width in [nh * hd, nkv * hd, nkv * hd] {
            let shape = [n, width];
            check(
                unsafe {
                    mlx_sys::mlx_fast_cuda_kernel_config_add_output_arg(
                        config.0,
                        shape.as_ptr(),
                        2,
                        mlx_sys::mlx_dtype__MLX_BFLOAT16,
                    )
                },
                "adding an output",
            )?;
        }
        // The grid counts threads: BLOCK per head slot, one block row per
        // token row.
        let slots = nh + 2 * nkv;
        check(
            unsafe { mlx_sys::mlx_fast_cuda_kernel_config_set_grid(config.0, BLOCK * slots, n, 1) },
            "setting the grid",
        )?;
        check(
            unsafe { mlx_sys::mlx_fast_cuda_kernel_config_set_thread_group(config.0, BLOCK, 1, 1) },
            "setting the block",
        )?;
        for (name, value) in [("HIDDEN", hidden), ("NH", nh), ("NKV", nkv), ("HD", hd)] {
            let name = c_string(name)?;
            check(
                unsafe {
                    mlx_sys::mlx_fast_cuda_kernel_config_add_template_arg_int(
                        config.0,
                        name.as_ptr(),
                        value,
                    )
                },
                "adding a template argument",
            )?;
        }
        let args = [
            x.as_ptr(),
            w.as_ptr(),
            q_norm.as_ptr(),
            k_norm.as_ptr(),
            positions.as_ptr(),
            params.as_ptr(),
        ];
        // SAFETY: the handles in `args` belong to arrays alive for the call
        // (mlx-c takes its own references into the vector). The kernel only
        // reads its inputs: block (slot, t) reads row t of x, the HD rows of
        // its slot in the packed weight (both checked by the caller),
        // HD values of one norm weight, positions[t] and params[0..2], and
        // writes the HD values of its slot in row t of exactly one output,
        // so every output element is written by exactly one thread and no
        // input is written. Outputs are moved out of the result vector into
        // owned `Array`s before it is freed.
        unsafe {
            let inputs = mlx_sys::mlx_vector_array_new_data(args.as_ptr(), args.len());
            let mut outs = mlx_sys::mlx_vector_array_new();
            let status = mlx_sys::mlx_fast_cuda_kernel_apply(
                &mut outs,
                self.kernel,
                inputs,
                config.0,
                stream.as_ptr(),
            );
            mlx_sys::mlx_vector_array_free(inputs);
            let result = check(status, "apply").map(|()| {
                (0..mlx_sys::mlx_vector_array_size(outs))
                    .map(|i| {
                        let mut a = mlx_sys::mlx_array_new();
                        mlx_sys::mlx_vector_array_get(&mut a, outs, i);
                        Array::from_ptr(a)
                    })
                    .collect()
            });
            mlx_sys::mlx_vector_array_free(outs);
            result
        }
    }
}

impl Drop for QkNormRopeCuda {
    fn drop(&mut self) {
        // SAFETY: created by mlx_fast_cuda_kernel_new and freed once.
        unsafe { mlx_sys::mlx_fast_cuda_kernel_free(self.kernel) };
    }
}
