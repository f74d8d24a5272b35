//! The kernel registry: one variant per `.cu` file, its source embedded with
//! `include_str!`, compiled by NVRTC for the device's architecture once per
//! process (the PTX is kept for later backends). Compile options live in one
//! function; a failed compile reports the file and NVRTC's log.

use super::CudaFault;
use crate::error::{Error, Result};
use cudarc::driver::{CudaContext, CudaFunction};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileError, CompileOptions};
use std::collections::BTreeMap;
use std::sync::Arc;

const COMMON: &str = include_str!("kernels/common.cuh");

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kernel {
    Embed,
    RmsNorm,
    Linear,
    LinearTc,
    Rope,
    QkvFused,
    Attention,
    Elementwise,
    Moe,
    Cache,
}

impl Kernel {
    pub const ALL: [Kernel; 10] = [
        Kernel::Embed,
        Kernel::RmsNorm,
        Kernel::Linear,
        Kernel::LinearTc,
        Kernel::Rope,
        Kernel::QkvFused,
        Kernel::Attention,
        Kernel::Elementwise,
        Kernel::Moe,
        Kernel::Cache,
    ];

    /// The family of this file's entry point `name` (argmax has its own,
    /// though it lives in linear.cu).
    pub fn family(self, name: &str) -> super::KernelFamily {
        use super::KernelFamily as F;
        match self {
            Kernel::Embed => F::Embed,
            Kernel::RmsNorm => F::Norm,
            Kernel::Linear if name.starts_with("argmax") => F::Argmax,
            Kernel::Linear | Kernel::LinearTc => F::Products,
            Kernel::Rope => F::Rope,
            Kernel::QkvFused => F::QkvFused,
            Kernel::Attention => F::Attention,
            Kernel::Elementwise => F::Elementwise,
            Kernel::Moe => F::Moe,
            Kernel::Cache => F::Cache,
        }
    }

    pub fn file(self) -> &'static str {
        match self {
            Kernel::Embed => "embed.cu",
            Kernel::RmsNorm => "rms_norm.cu",
            Kernel::Linear => "linear.cu",
            Kernel::LinearTc => "linear_tc.cu",
            Kernel::Rope => "rope.cu",
            Kernel::QkvFused => "qkv_fused.cu",
            Kernel::Attention => "attention.cu",
            Kernel::Elementwise => "elementwise.cu",
            Kernel::Moe => "moe.cu",
            Kernel::Cache => "cache.cu",
        }
    }

    fn body(self) -> &'static str {
        match self {
            Kernel::Embed => include_str!("kernels/embed.cu"),
            Kernel::RmsNorm => include_str!("kernels/rms_norm.cu"),
            Kernel::Linear => include_str!("kernels/linear.cu"),
            Kernel::LinearTc => include_str!("kernels/linear_tc.cu"),
            Kernel::Rope => include_str!("kernels/rope.cu"),
            Kernel::QkvFused => include_str!("kernels/qkv_fused.cu"),
            Kernel::Attention => include_str!("kernels/attention.cu"),
            Kernel::Elementwise => include_str!("kernels/elementwise.cu"),
            Kernel::Moe => include_str!("kernels/moe.cu"),
            Kernel::Cache => include_str!("kernels/cache.cu"),
        }
    }

    /// The `extern "C"` entry points of the file.
    pub fn functions(self) -> &'static [&'static str] {
        match self {
            Kernel::Embed => &["embed_bf16"],
            Kernel::RmsNorm => &["rms_norm_bf16", "add_rms_norm_bf16"],
            Kernel::Linear => &[
                "gemv_bf16",
                "gemv_many_bf16",
                "gemv1_bf16",
                "gate_up_swiglu_bf16",
                "gemv_atomic_bf16",
                "gemv1_fast_bf16",
                "gate_up_swiglu_fast_bf16",
                "f32_to_bf16_reset",
                "linear_bf16",
                "argmax_bf16",
                "argmax_rows_bf16",
            ],
            Kernel::LinearTc => &[
                "gemm_tc1_bf16",
                "gemm_tc2_bf16",
                "gemm_tc4_bf16",
                "gemm_tc8_bf16",
                "gate_up_tc1_bf16",
                "gate_up_tc2_bf16",
                "gate_up_tc4_bf16",
                "gemm_tc1_f32",
                "gemm_tc2_f32",
                "gemm_tc4_f32",
                "gemm_tc8_f32",
                "gemm_tcs4_p1_f32",
                "gemm_tcs4_p2_f32",
                "gemm_tcs4_p4_f32",
                "gemm_tcs4_p8_f32",
                "gemm_tcs8_p1_f32",
                "gemm_tcs8_p2_f32",
                "gemm_tcs8_p4_f32",
                "gemm_tcs8_p8_f32",
                "gemm_tcs4_p1_bf16",
                "gate_up_tcs4_p1_bf16",
                "gemm_tcs4_p2_bf16",
                "gate_up_tcs4_p2_bf16",
                "gemm_tcs4_p4_bf16",
                "gate_up_tcs4_p4_bf16",
                "gemm_tcs4_p8_bf16",
                "gate_up_tcs4_p8_bf16",
                "gemm_tcs8_p1_bf16",
                "gate_up_tcs8_p1_bf16",
                "gemm_tcs8_p2_bf16",
                "gate_up_tcs8_p2_bf16",
                "gemm_tcs8_p4_bf16",
                "gate_up_tcs8_p4_bf16",
                "gemm_tcs8_p8_bf16",
                "gate_up_tcs8_p8_bf16",
            ],
            Kernel::Rope => &["rope_bf16"],
            Kernel::QkvFused => &[
                "qkv_fused_bf16",
                "qkv_fused1_bf16",
                "qkv_fused1_pairs_bf16",
                "qkv_finish_bf16",
            ],
            Kernel::Attention => &[
                "attn_scores_bf16",
                "attn_exp_bf16",
                "attn_out_bf16",
                "attn_decode_bf16",
                "attn_decode_cluster_bf16",
                "attn_decode_batch_bf16",
            ],
            Kernel::Elementwise => &["add_bf16", "swiglu_bf16"],
            Kernel::Moe => &[
                "gather_rows_bf16",
                "moe_accumulate_bf16",
                "moe_route_bf16",
                "moe_gate_up_bf16",
                "moe_down_bf16",
                "moe_combine_bf16",
            ],
            Kernel::Cache => &["cache_append_bf16", "cache_append_batch_bf16"],
        }
    }

    pub fn source(self) -> String {
        format!("{COMMON}\n#line 1 \"{}\"\n{}", self.file(), self.body())
    }
}

/// NVRTC options for every kernel. Precise division and square root, no
/// flush-to-zero: the kernels round like the CPU reference's bf16 mode.
pub fn compile_options(arch: &'static str) -> CompileOptions {
    CompileOptions {
        arch: Some(arch),
        ftz: Some(false),
        prec_div: Some(true),
        prec_sqrt: Some(true),
        use_fast_math: Some(false),
        ..Default::default()
    }
}

/// The family of entry point `name`, if a file exports it.
pub fn family_of(name: &str) -> Option<super::KernelFamily> {
    Kernel::ALL
        .into_iter()
        .find(|k| k.functions().contains(&name))
        .map(|k| k.family(name))
}

/// Compiles one file to PTX; errors carry the file and NVRTC's log.
pub fn compile(kernel: Kernel, arch: &'static str) -> Result<cudarc::nvrtc::Ptx> {
    compile_source(kernel.file(), kernel.source(), arch)
}

/// Compiles `source` (named `file` in errors) with the kernels' options.
pub fn compile_source(
    file: &str,
    source: String,
    arch: &'static str,
) -> Result<cudarc::nvrtc::Ptx> {
    compile_ptx_with_opts(source, compile_options(arch)).map_err(|e| {
        let detail = match &e {
            CompileError::CompileError { log, .. } => log.to_string_lossy().into_owned(),
            other => format!("{other:?}"),
        };
        Error::Backend {
            backend: crate::ident::BackendKind::Cuda,
            problem: format!("NVRTC failed on kernels/{file} for {arch}:\n{detail}"),
        }
    })
}

/// PTX compiled in this process, per (kernel, architecture): every backend
/// after the first loads its modules without running NVRTC again.
static COMPILED: std::sync::Mutex<BTreeMap<(Kernel, &'static str), cudarc::nvrtc::Ptx>> =
    std::sync::Mutex::new(BTreeMap::new());

fn compiled(kernel: Kernel, arch: &'static str) -> Result<cudarc::nvrtc::Ptx> {
    if let Some(p) = COMPILED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&(kernel, arch))
    {
        return Ok(p.clone());
    }
    let ptx = compile(kernel, arch)?;
    COMPILED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert((kernel, arch), ptx.clone());
    Ok(ptx)
}

/// The file a planted fault rewrites and its rewrites (each text must occur
/// exactly once in the file).
fn fault_patches(fault: CudaFault) -> (Kernel, &'static [(&'static str, &'static str)]) {
    match fault {
        CudaFault::DecodeFusedKNorm => (
            Kernel::QkvFused,
            &[
                (
                    "qkv_fused1_bf16(QKV_FUSED_ARGS) { qkv_fused_body<1, 1>(QKV_FUSED_PASS); }",
                    "qkv_fused1_bf16(QKV_FUSED_ARGS) { qkv_fused_body<1, 1>(x, w, qn, qn, q, k, v, kc, vc, pos, raw, counters, n, hidden, n_heads, n_kv, head_dim, parts, eps, theta); }",
                ),
                (
                    "qkv_fused1_pairs_bf16(QKV_FUSED_ARGS) { qkv_fused_body<1, 2>(QKV_FUSED_PASS); }",
                    "qkv_fused1_pairs_bf16(QKV_FUSED_ARGS) { qkv_fused_body<1, 2>(x, w, qn, qn, q, k, v, kc, vc, pos, raw, counters, n, hidden, n_heads, n_kv, head_dim, parts, eps, theta); }",
                ),
            ],
        ),
        CudaFault::DecodeGemvDropsTail => (
            Kernel::Linear,
            &[(
                "gemv_body<1>(x, w, y, n, k, m, parts, blockIdx.y, blockIdx.x);",
                "gemv_body<1>(x, w, y, n, k - 8, m, parts, blockIdx.y, blockIdx.x);",
            )],
        ),
        CudaFault::DecodeAttentionDropsNewest => (
            Kernel::Attention,
            &[
                (
                    "int len = at + 1, nch = chunks_of(len)",
                    "int len = max(at, 1), nch = chunks_of(len)",
                ),
                (
                    "int len = pos[0] + 1, nch = chunks_of(len);",
                    "int len = max(pos[0], 1), nch = chunks_of(len);",
                ),
            ],
        ),
        CudaFault::RopePositionOffset => (
            Kernel::Rope,
            &[(
                "float a = inv * (float)pos[r];",
                "float a = inv * (float)(pos[r] + 1);",
            )],
        ),
        CudaFault::CacheAppendStoresKAsV => (
            Kernel::Cache,
            &[(
                "vc[at + c] = v[r * kv_dim + c];",
                "vc[at + c] = k[r * kv_dim + c];",
            )],
        ),
        CudaFault::BatchedGemvSplitFollowsBatch => (
            Kernel::Linear,
            &[(
                "    gemv_body_rows<ROWS_PER_PASS, MANY_NW>(x, w, y, n, k, m, parts, blockIdx.x % groups, blockIdx.x / groups);",
                r#"    int group = blockIdx.x % groups, wblock = blockIdx.x / groups;
    if (group == 0) {
        gemv_body_rows<ROWS_PER_PASS, MANY_NW>(x, w, y, n, k, m, parts, group, wblock);
        return;
    }
    pdl_sync();
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int o0 = wblock * (MANY_NW * 8 / parts) + (warp / parts) * MANY_NW;
    if (warp % parts != 0) return;
    for (int o = o0; o < min(m, o0 + MANY_NW); o++)
        for (int r = group * ROWS_PER_PASS; r < min(n, (group + 1) * ROWS_PER_PASS); r++) {
            float acc = 0.0f;
            for (int i = lane; i < k; i += 32) acc += bf2f(x[(size_t)r * k + i]) * bf2f(w[(size_t)o * k + i]);
            acc = warp_sum(acc);
            if (lane == 0) y[(size_t)r * m + o] = f2bf(acc);
        }"#,
            )],
        ),
        CudaFault::TensorCoreOrderFollowsBatch => (
            Kernel::LinearTc,
            &[(
                "if (j * 8 < nr) mma_chunk(acc[v][j], lo[v][u], hi[v][u], xv[u][j]);",
                r#"if (j == 0) mma_chunk(acc[v][j], lo[v][u], hi[v][u], xv[u][j]);
                        else if (j * 8 < nr) {
                            float apart[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                            mma_chunk(apart, lo[v][u], hi[v][u], xv[u][j]);
                            for (int i = 0; i < 4; i++) acc[v][j][i] += apart[i];
                        }"#,
                ),
                (
                    "for (int v = 0; v < W; v++) mma_chunk(acc[v][j], lo[v][s], hi[v][s], xv);",
                    r#"for (int v = 0; v < W; v++) {
                            if (j == 0) mma_chunk(acc[v][j], lo[v][s], hi[v][s], xv);
                            else {
                                float apart[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                                mma_chunk(apart, lo[v][s], hi[v][s], xv);
                                for (int i = 0; i < 4; i++) acc[v][j][i] += apart[i];
                            }
                        }"#,
                ),
            ],
        ),
        CudaFault::MoeRouteNextExpert => (
            Kernel::Moe,
            &[(
                "if (rank < top_k) by_rank[rank] = i;",
                "if (rank < top_k) by_rank[rank] = (i + 1) % n_experts;",
            )],
        ),
    }
}

/// The kernel file `fault` is planted in.
pub fn fault_kernel(fault: CudaFault) -> Kernel {
    fault_patches(fault).0
}

/// `kernel`'s source with `fault`'s rewrites, or the error naming the text
/// the file no longer holds (a control that silently planted nothing would
/// prove nothing).
pub fn faulty_source(kernel: Kernel, fault: CudaFault) -> Result<String> {
    let (_, patches) = fault_patches(fault);
    let mut body = kernel.body().to_string();
    for (find, replace) in patches {
        if body.matches(find).count() != 1 {
            return Err(Error::Backend {
                backend: crate::ident::BackendKind::Cuda,
                problem: format!(
                    "planted fault {}: kernels/{} does not hold `{find}` exactly once",
                    fault.name(),
                    kernel.file()
                ),
            });
        }
        body = body.replacen(find, replace, 1);
    }
    Ok(format!("{COMMON}\n#line 1 \"{}\"\n{body}", kernel.file()))
}

/// Every entry point, loaded into `ctx`; `fault`'s kernel file compiled
/// from its rewritten source (not kept for later backends).
pub fn load_all(
    ctx: &Arc<CudaContext>,
    arch: &'static str,
    fault: Option<CudaFault>,
) -> Result<BTreeMap<&'static str, CudaFunction>> {
    let mut out = BTreeMap::new();
    for k in Kernel::ALL {
        let ptx = match fault {
            Some(f) if fault_patches(f).0 == k => {
                compile_source(k.file(), faulty_source(k, f)?, arch)?
            }
            _ => compiled(k, arch)?,
        };
        let module = ctx.load_module(ptx).map_err(|e| Error::Backend {
            backend: crate::ident::BackendKind::Cuda,
            problem: format!("loading kernels/{}: {e}", k.file()),
        })?;
        for f in k.functions() {
            let func = module.load_function(f).map_err(|e| Error::Backend {
                backend: crate::ident::BackendKind::Cuda,
                problem: format!("kernels/{}: no function {f}: {e}", k.file()),
            })?;
            out.insert(*f, func);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::{family_of, Kernel};
    use crate::backend::cuda::KernelFamily;

    /// Every entry point has a family (`bench --split` can leave any out),
    /// argmax its own.
    #[test]
    fn every_entry_point_has_a_family() {
        for k in Kernel::ALL {
            for f in k.functions() {
                assert!(family_of(f).is_some(), "{f}");
            }
        }
        assert_eq!(family_of("argmax_bf16"), Some(KernelFamily::Argmax));
        assert_eq!(family_of("gemv1_bf16"), Some(KernelFamily::Products));
        assert_eq!(family_of("gemm_tc8_bf16"), Some(KernelFamily::Products));
        assert_eq!(family_of("add_rms_norm_bf16"), Some(KernelFamily::Norm));
        assert_eq!(family_of("no_such_kernel"), None);
    }
}
