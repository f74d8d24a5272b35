// Shared device helpers, prepended to every kernel file by the registry
// (src/backend/cuda/kernels.rs), so no include path is needed.
// bf16 values travel as their bit patterns (unsigned short): no CUDA headers.
typedef unsigned short bf16_t;
#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float bf2f(bf16_t b) { return __uint_as_float(((unsigned int)b) << 16); }

// Round to nearest, ties to even; NaN stays NaN.
__device__ __forceinline__ bf16_t f2bf(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16_t)((u >> 16) | 0x40u);
    unsigned int r = 0x7fffu + ((u >> 16) & 1u);
    return (bf16_t)((u + r) >> 16);
}

// Value rounded to bf16, kept as float.
__device__ __forceinline__ float r16(float f) { return bf2f(f2bf(f)); }

// Butterfly over a warp: the same order on every run.
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Block-wide sum in a fixed order (each warp's butterfly, then warp 0 over
// the warp sums); every thread gets the result. blockDim.x must be a
// multiple of 32, at most 1024. `scratch` holds 32 floats.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = (threadIdx.x < nw) ? scratch[threadIdx.x] : 0.0f;
    if (warp == 0) t = warp_sum(t);
    if (threadIdx.x == 0) scratch[0] = t;
    __syncthreads();
    float r = scratch[0];
    __syncthreads();
    return r;
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = (threadIdx.x < nw) ? scratch[threadIdx.x] : NEG_INF;
    if (warp == 0) t = warp_max(t);
    if (threadIdx.x == 0) scratch[0] = t;
    __syncthreads();
    float r = scratch[0];
    __syncthreads();
    return r;
}
