// lockstep's fused attention-input kernel for MLX's CUDA backend: q, k, v
// projected from the packed weight ([q heads | k heads | v heads] rows), q
// and k RMS-normalised per head in f32, rotated with unrounded f32 cos/sin,
// each output rounded to bf16 once: the contract of the CUDA backend's
// qkv_fused.cu, in one launch.
//
// This file is a kernel *body*. MLX's custom-kernel API (mlx_fast_cuda_kernel,
// src/backend/mlx/cuda_kernel.rs) generates the signature from the input and
// output names,
//   (const __nv_bfloat16* x, const __nv_bfloat16* w, const __nv_bfloat16* q_norm,
//    const __nv_bfloat16* k_norm, const int32_t* positions, const float* params,
//    __nv_bfloat16* q, __nv_bfloat16* k, __nv_bfloat16* v),
// declares the template arguments HIDDEN, NH, NKV and HD as constexpr ints,
// and puts the body inside namespace mlx::core::cu. The header is the CUDA
// backend's common.cuh, so the projection sums exactly as its warp_dot does
// (16-byte chunks, lane order, butterfly); its helpers live in the global
// namespace, hence the `::`.
//
// Launch: blocks (NH + 2 NKV head slots, n rows), 256 threads. A block
// projects its slot's HD weight rows for its row (8 warps, one output at a
// time each), then the slot is a v head (rounded and stored) or a q/k head
// (normalised over HD, weighted, rotated, stored). params = [eps, theta].
// Every sum has a fixed order and nothing goes through an atomic: the same
// bits on every run, and a row's result does not depend on the other rows.
const int slot = blockIdx.x, t = blockIdx.y;
const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, d = threadIdx.x;
__shared__ float vals[HD];
__shared__ float scratch[32];
const ::bf16_t* xr = reinterpret_cast<const ::bf16_t*>(x) + (size_t)t * HIDDEN;
const ::bf16_t* wr = reinterpret_cast<const ::bf16_t*>(w) + (size_t)slot * HD * HIDDEN;
for (int o = warp; o < HD; o += 8) {
    float acc[1];
    ::warp_dot_rows<1>(xr, wr + (size_t)o * HIDDEN, 1, HIDDEN, 0, 1, acc);
    if (lane == 0) vals[o] = acc[0];
}
__syncthreads();
const float a = d < HD ? vals[d] : 0.0f;
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
