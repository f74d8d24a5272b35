// Phase 2 of lockstep's fused attention-input kernels for MLX's CUDA
// backend: from phase 1's raw f32 projection (qkv_proj.cu), q and k
// RMS-normalised per head in f32, rotated with unrounded f32 cos/sin, each
// output rounded to bf16 once: with phase 1, the contract of the CUDA
// backend's qkv_fused.cu in two launches (the projection needs the whole
// GPU, the norm a whole head per block).
//
// A kernel *body* (src/backend/mlx/cuda_kernel.rs): MLX generates the
// signature
//   (const float* raw, const __nv_bfloat16* q_norm, const __nv_bfloat16* k_norm,
//    const int32_t* positions, const float* params,
//    __nv_bfloat16* q, __nv_bfloat16* k, __nv_bfloat16* v),
// declares NH, NKV and HD as constexpr ints and puts the body in namespace
// mlx::core::cu; the header is the CUDA backend's common.cuh (its helpers
// are global, hence the `::`).
//
// Launch: blocks (NH + 2 NKV head slots, n rows), 256 threads, thread d
// taking element d of its slot. A v slot is rounded and stored; a q or k
// slot is normalised over HD (block_sum's fixed order), weighted, rotated
// and stored. params = [eps, theta]. Every sum has a fixed order and nothing
// goes through an atomic: the same bits on every run, and a row's result
// does not depend on the other rows.
const int slot = blockIdx.x, t = blockIdx.y, d = threadIdx.x;
constexpr int ROWS = (NH + 2 * NKV) * HD;
__shared__ float vals[HD];
__shared__ float scratch[32];
const float a = d < HD ? raw[(size_t)t * ROWS + (size_t)slot * HD + d] : 0.0f;
if (slot >= NH + NKV) {
    if (d < HD)
        reinterpret_cast<::bf16_t*>(v)[(size_t)t * NKV * HD + (size_t)(slot - NH - NKV) * HD + d] = ::f2bf(a);
    return;
}
const bool is_q = slot < NH;
const float ss = ::block_sum(a * a, scratch);
const float rr = rsqrtf(ss / (float)HD + params[0]);
const ::bf16_t* nw = reinterpret_cast<const ::bf16_t*>(is_q ? q_norm : k_norm);
if (d < HD) vals[d] = a * rr * ::bf2f(nw[d]);
__syncthreads();
if (d < HD) {
    const int half = HD / 2, i = d % half;
    const float inv = 1.0f / powf(params[1], (float)(2 * i) / (float)HD);
    const float ang = inv * (float)positions[t];
    const float c = cosf(ang), s = sinf(ang);
    const float out = d < half ? vals[d] * c - vals[d + half] * s : vals[d] * c + vals[d - half] * s;
    const int heads = is_q ? NH : NKV, h = is_q ? slot : slot - NH;
    reinterpret_cast<::bf16_t*>(is_q ? q : k)[(size_t)t * heads * HD + (size_t)h * HD + d] = ::f2bf(out);
}
