//! The fused QK-norm + RoPE step as one custom Metal kernel
//! (`mlx_rs::fast::MetalKernel`), for MLX on a Mac's GPU.
//!
//! UNTESTED: written on Linux, where no Metal device exists. It is compiled
//! on macOS, and type-checked on Linux with `--features mlx-metal-check`;
//! it has never run. docs/mlx.md says what a first macOS run should check.
//!
//! The kernel takes the packed projection `proj = x @ W_qkv^T` (an MLX
//! matmul, `[n, (heads + 2 kv_heads) * head_dim]`, bf16) and writes q, k, v.
//! One thread per (row, q or kv head) does that head serially: the sum of
//! squares in f32, the normalised value rounded to bf16 and multiplied by the
//! norm weight (rounded again, as `fast::rms_norm` and transformers do), then
//! NeoX RoPE in f32 with one rounding per output. A kv-head thread also
//! copies its slice of v. Serial heads keep the kernel obviously correct and
//! are fast enough for head_dim <= 256; it is not tuned.
//!
//! Invariants the caller (`MlxBackend::fused_qkv`) has checked: `proj` has
//! `n` rows of `(heads + 2 kv_heads) * head_dim`, both norm weights have
//! `head_dim` values, head_dim is even, `positions` has `n` int32 values,
//! and `n > 0`.

use crate::backend::AttnDims;
use mlx_rs::error::Exception;
use mlx_rs::fast::{
    MetalKernel, MetalKernelApplyOptions, MetalKernelOptions, MetalKernelOutput, TemplateArg,
};
use mlx_rs::{Array, Dtype};

/// The kernel body; MLX generates the signature from the names below
/// (`proj_shape` because the body reads it; `params` has 2 elements, so it
/// is a `constant` pointer). Angles use `metal::precise` functions: fast-math
/// sin/cos lose accuracy at the angles of late positions.
const SOURCE: &str = r#"
    uint t = thread_position_in_grid.x;
    uint n = uint(proj_shape[0]);
    uint heads = uint(NH + NKV);
    uint row = t / heads;
    uint h = t % heads;
    if (row >= n) {
        return;
    }
    uint width = uint((NH + 2 * NKV) * HD);
    bool is_q = h < uint(NH);
    uint kvh = is_q ? 0 : h - uint(NH);
    uint src = row * width + (is_q ? h * HD : NH * HD + kvh * HD);
    const device bfloat16_t* w = is_q ? q_norm : k_norm;
    device bfloat16_t* dst = is_q ? q + (row * NH + h) * HD : k + (row * NKV + kvh) * HD;

    float ss = 0.0f;
    for (int j = 0; j < HD; j++) {
        float x = float(proj[src + j]);
        ss += x * x;
    }
    float inv = metal::precise::rsqrt(ss / float(HD) + params[0]);
    float pos = float(positions[row]);
    for (int j = 0; j < HD / 2; j++) {
        float a = float(bfloat16_t(float(bfloat16_t(float(proj[src + j]) * inv)) * float(w[j])));
        float b = float(bfloat16_t(float(bfloat16_t(float(proj[src + j + HD / 2]) * inv)) * float(w[j + HD / 2])));
        float freq = metal::precise::pow(params[1], -2.0f * float(j) / float(HD));
        float c = metal::precise::cos(pos * freq);
        float s = metal::precise::sin(pos * freq);
        dst[j] = bfloat16_t(a * c - b * s);
        dst[j + HD / 2] = bfloat16_t(a * s + b * c);
    }
    if (!is_q) {
        uint vsrc = row * width + (NH + NKV) * HD + kvh * HD;
        device bfloat16_t* vdst = v + (row * NKV + kvh) * HD;
        for (int j = 0; j < HD; j++) {
            vdst[j] = proj[vsrc + j];
        }
    }
"#;

/// Threads per threadgroup: a multiple of the SIMD width (32) well under
/// every Apple GPU's limit (1024).
const GROUP: i32 = 256;

pub struct QkNormRopeKernel {
    kernel: MetalKernel,
}

impl QkNormRopeKernel {
    pub fn new() -> Result<Self, Exception> {
        let kernel = MetalKernel::new(
            "lockstep_qk_norm_rope",
            &["proj", "q_norm", "k_norm", "positions", "params"],
            &["q", "k", "v"],
            SOURCE,
            MetalKernelOptions {
                // The body indexes rows as contiguous; MLX copies otherwise.
                ensure_row_contiguous: true,
                ..Default::default()
            },
        )?;
        Ok(QkNormRopeKernel { kernel })
    }

    /// q, k, v (bf16) from `proj [n, (heads + 2 kv_heads) * head_dim]`, the
    /// flat norm weights and int32 `positions [n]`, on the current (GPU)
    /// stream.
    pub fn apply(
        &self,
        proj: &Array,
        q_norm: &Array,
        k_norm: &Array,
        positions: &Array,
        dims: &AttnDims,
    ) -> Result<Vec<Array>, Exception> {
        let (n, hd) = (proj.dim(0), dims.head_dim as i32);
        let (nh, nkv) = (dims.n_heads as i32, dims.n_kv_heads as i32);
        let params = Array::from_slice(&[dims.eps as f32, dims.rope_theta as f32], &[2]);
        let threads = n * (nh + nkv);
        let out = |heads: i32| MetalKernelOutput {
            shape: vec![n, heads * hd],
            dtype: Dtype::Bfloat16,
        };
        // SAFETY: `threads` threads, one per (row, head); a thread returns
        // when its row is beyond `n` (the last threadgroup may overhang).
        // Thread (row, h) reads `proj[row, ..width]` (width = the projection's
        // row length, checked by the caller), `head_dim` values of one norm
        // weight (checked), `positions[row]` and `params[0..2]`, and writes
        // head h's `head_dim` values of q (or of k and v) in `row`: every
        // output element is written by exactly one thread, no input is
        // written.
        unsafe {
            self.kernel.apply(
                &[proj, q_norm, k_norm, positions, &params],
                &[out(nh), out(nkv), out(nkv)],
                (threads, 1, 1),
                (threads.min(GROUP), 1, 1),
                MetalKernelApplyOptions {
                    template_args: vec![
                        ("NH".into(), TemplateArg::Int(nh)),
                        ("NKV".into(), TemplateArg::Int(nkv)),
                        ("HD".into(), TemplateArg::Int(hd)),
                    ],
                    ..Default::default()
                },
            )
        }
    }
}
