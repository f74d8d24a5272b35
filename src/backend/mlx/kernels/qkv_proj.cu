// Phase 1 of lockstep's fused attention-input kernels for MLX's CUDA
// backend: the packed QKV projection, raw f32, spread over the whole GPU.
//
// A kernel *body* (src/backend/mlx/cuda_kernel.rs): MLX generates the
// signature (const __nv_bfloat16* x, const __nv_bfloat16* w, float* raw),
// declares HIDDEN and ROWS (the packed weight's rows) as constexpr ints and
// puts the body in namespace mlx::core::cu; the header is the CUDA backend's
// common.cuh (its helpers are global, hence the `::`).
//
// Launch: blocks (ceil(ROWS / 8), n rows), 256 threads; warp w of block b
// computes row 8 b + w of the packed weight against row t of x with
// warp_dot (16-byte chunks in lane order, then the butterfly), the same sum
// whatever the launch shape. raw[t, row] = that sum, unrounded, for phase 2
// (qk_norm_rope.cu).
const int t = blockIdx.y;
const int row = blockIdx.x * 8 + (threadIdx.x >> 5), lane = threadIdx.x & 31;
if (row < ROWS) {
    float acc[1];
    ::warp_dot_rows<1>(reinterpret_cast<const ::bf16_t*>(x) + (size_t)t * HIDDEN,
                       reinterpret_cast<const ::bf16_t*>(w) + (size_t)row * HIDDEN, 1, HIDDEN, 0, 1, acc);
    if (lane == 0) raw[(size_t)t * ROWS + row] = acc[0];
}
