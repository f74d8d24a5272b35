//! The fused attention-input step as lockstep's custom CUDA kernels on MLX's
//! CUDA build (`mlx_fast_cuda_kernel_*` of mlx-c 0.7.0; mlx-rs 0.33 wraps
//! only the Metal counterpart, so the calls go to `mlx_sys` directly): the
//! packed projection over the whole GPU (`kernels/qkv_proj.cu`), then the
//! per-head norm and rotation (`kernels/qk_norm_rope.cu`), two launches.
//!
//! Both bodies take the CUDA backend's own `common.cuh` as their header, so
//! the projection sums as lockstep's CUDA kernels do. MLX compiles a kernel
//! with NVRTC when its outputs are first evaluated (errors, with NVRTC's log,
//! surface from evaluation) and caches it per name and template arguments,
//! i.e. per geometry.
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

const HEADER: &str = include_str!("../cuda/kernels/common.cuh");
/// Threads per block in both phases: 8 warps (phase 1 gives each warp one
/// weight row; phase 2 one thread per element of a head, head_dim <= 256).
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

/// One custom kernel: its source, names and MLX handle.
struct Kernel(mlx_sys::mlx_fast_cuda_kernel);

impl Kernel {
    fn new(name: &str, inputs: &[&str], outputs: &[&str], source: &str) -> Result<Self, Exception> {
        let (name, source, header) = (c_string(name)?, c_string(source)?, c_string(HEADER)?);
        let (inputs, outputs) = (Names::new(inputs)?, Names::new(outputs)?);
        // SAFETY: every argument is valid for the call; mlx-c copies the
        // strings and vectors into the kernel object it returns.
        let k = unsafe {
            mlx_sys::mlx_fast_cuda_kernel_new(
                name.as_ptr(),
                inputs.0,
                outputs.0,
                source.as_ptr(),
                header.as_ptr(),
                // The bodies index rows as contiguous; MLX copies otherwise.
                true,
                0,
            )
        };
        if k.ctx.is_null() {
            return Err(Exception::custom("mlx_fast_cuda_kernel_new failed"));
        }
        Ok(Kernel(k))
    }

    /// Launches over `blocks` blocks of BLOCK threads (MLX's grid counts
    /// threads), with `outputs` as (shape, dtype) and `template` as
    /// compile-time ints, on `stream`.
    ///
    /// SAFETY (of the caller): for these inputs, outputs and launch, the body
    /// must stay inside its buffers, write no input, and write every output
    /// element exactly once.
    unsafe fn apply(
        &self,
        inputs: &[&Array],
        outputs: &[([i32; 2], mlx_sys::mlx_dtype)],
        blocks: (i32, i32),
        template: &[(&str, i32)],
        stream: &Stream,
    ) -> Result<Vec<Array>, Exception> {
        // SAFETY: a fresh config; each call passes it and valid arguments
        // (C strings live for the call, shapes point at 2 ints).
        let config = Config(mlx_sys::mlx_fast_cuda_kernel_config_new());
        for (shape, dtype) in outputs {
            check(
                mlx_sys::mlx_fast_cuda_kernel_config_add_output_arg(
                    config.0,
                    shape.as_ptr(),
                    2,
                    *dtype,
                ),
                "adding an output",
            )?;
        }
        check(
            mlx_sys::mlx_fast_cuda_kernel_config_set_grid(config.0, BLOCK * blocks.0, blocks.1, 1),
            "setting the grid",
        )?;
        check(
            mlx_sys::mlx_fast_cuda_kernel_config_set_thread_group(config.0, BLOCK, 1, 1),
            "setting the block",
        )?;
        for (name, value) in template {
            let name = c_string(name)?;
            check(
                mlx_sys::mlx_fast_cuda_kernel_config_add_template_arg_int(
                    config.0,
                    name.as_ptr(),
                    *value,
                ),
                "adding a template argument",
            )?;
        }
        // The handles belong to arrays alive for the call (mlx-c takes its
        // own references); outputs are moved out of the result vector into
        // owned `Array`s before it is freed.
        let handles: Vec<mlx_sys::mlx_array> = inputs.iter().map(|a| a.as_ptr()).collect();
        let ins = mlx_sys::mlx_vector_array_new_data(handles.as_ptr(), handles.len());
        let mut outs = mlx_sys::mlx_vector_array_new();
        let status =
            mlx_sys::mlx_fast_cuda_kernel_apply(&mut outs, self.0, ins, config.0, stream.as_ptr());
        mlx_sys::mlx_vector_array_free(ins);
        let result = check(status, "apply").and_then(|()| {
            (0..mlx_sys::mlx_vector_array_size(outs))
                .map(|i| {
                    let mut a = mlx_sys::mlx_array_new();
                    let got = mlx_sys::mlx_vector_array_get(&mut a, outs, i);
                    // Owned either way, so freed either way.
                    let a = Array::from_ptr(a);
                    check(got, "reading an output").map(|()| a)
                })
                .collect()
        });
        mlx_sys::mlx_vector_array_free(outs);
        result
    }
}

impl Drop for Kernel {
    fn drop(&mut self) {
        // SAFETY: created by mlx_fast_cuda_kernel_new and freed once.
        unsafe { mlx_sys::mlx_fast_cuda_kernel_free(self.0) };
    }
}

/// The two phases of lockstep's fused attention-input path on MLX's GPU.
pub struct QkNormRopeCuda {
    proj: Kernel,
    norm: Kernel,
}

impl QkNormRopeCuda {
    pub fn new() -> Result<Self, Exception> {
        Ok(QkNormRopeCuda {
            proj: Kernel::new(
                "lockstep_qkv_proj",
                &["x", "w"],
                &["raw"],
                include_str!("kernels/qkv_proj.cu"),
            )?,
            norm: Kernel::new(
                "lockstep_qk_norm_rope",
                &["raw", "q_norm", "k_norm", "positions", "params"],
                &["q", "k", "v"],
                include_str!("kernels/qk_norm_rope.cu"),
            )?,
        })
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
        let (slots, rows) = (nh + 2 * nkv, (nh + 2 * nkv) * hd);
        let params = Array::from_slice(&[dims.eps as f32, dims.rope_theta as f32], &[2]);
        // SAFETY: block (b, t) of phase 1 reads row t of x and, per warp,
        // weight row 8 b + w when it is below ROWS (x and the packed weight
        // checked by the caller), and writes raw[t, that row]: each element
        // of raw [n, ROWS] once. Block (slot, t) of phase 2 reads HD values of
        // raw row t, HD values of one norm weight (checked), positions[t] and
        // params[0..2], and writes its slot's HD values in row t of exactly
        // one of q, k, v. No input is written.
        unsafe {
            let raw = self.proj.apply(
                &[x, w],
                &[([n, rows], mlx_sys::mlx_dtype__MLX_FLOAT32)],
                ((rows + 7) / 8, n),
                &[("HIDDEN", hidden), ("ROWS", rows)],
                stream,
            )?;
            let bf16 = mlx_sys::mlx_dtype__MLX_BFLOAT16;
            let raw = raw
                .first()
                .ok_or_else(|| Exception::custom("the projection kernel gave no output"))?;
            self.norm.apply(
                &[raw, q_norm, k_norm, positions, &params],
                &[
                    ([n, nh * hd], bf16),
                    ([n, nkv * hd], bf16),
                    ([n, nkv * hd], bf16),
                ],
                (slots, n),
                &[("NH", nh), ("NKV", nkv), ("HD", hd)],
                stream,
            )
        }
    }
}
