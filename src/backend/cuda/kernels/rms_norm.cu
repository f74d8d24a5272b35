// RMSNorm of each `width`-element group, transformers' bf16 rounding:
// n = bf16(x * rsqrt(mean(x^2) + eps)); out = bf16(w * n). One block per
// group. The sum of squares has one fixed order: thread t < NORM_THREADS
// adds the squares of elements t, t + NORM_THREADS, ... in that order, then
// block_sum (threads past NORM_THREADS add zeros, which leaves its result
// unchanged), so the bits depend on the width only, never on the block size.
//
// Latency, not bandwidth, is the cost here (a decode step normalises one
// row of a few thousand elements with one block). The block is as wide as
// the group (up to 1024 threads), so the elementwise work (loads, the
// residual add, rounding, stores) is spread over all of it and only the
// ordered squares run on NORM_THREADS threads, from values other warps need
// not hand over: each of those threads reloads its own elements (L1/L2 hits).

// One element of the residual sum, as stored: bf16(x + r).
__device__ __forceinline__ float sum_at(const bf16_t* __restrict__ x, const bf16_t* __restrict__ r, int c) {
    return r16(bf2f(x[c]) + bf2f(r[c]));
}

extern "C" __global__ void rms_norm_bf16(const bf16_t* __restrict__ x, const bf16_t* __restrict__ w, bf16_t* __restrict__ out, int width, float eps) {
    __shared__ float scratch[32];
    size_t g = blockIdx.x;
    const bf16_t* xr = x + g * width;
    pdl_sync();
    float ss = 0.0f;
    if (threadIdx.x < NORM_THREADS)
#pragma unroll 16
        for (int c = threadIdx.x; c < width; c += NORM_THREADS) {
            float v = bf2f(xr[c]);
            ss += v * v;
        }
    ss = block_sum(ss, scratch);
    float rr = rsqrtf(ss / (float)width + eps);
    for (int c = threadIdx.x; c < width; c += blockDim.x) out[g * width + c] = f2bf(bf2f(w[c]) * r16(bf2f(xr[c]) * rr));
}

// Residual add then RMSNorm of the sum, in one launch: sum = bf16(x + r)
// (written out: it is the residual stream) and out = rms_norm(sum), in
// rms_norm_bf16's order, so the bits equal the two separate launches'.
extern "C" __global__ void add_rms_norm_bf16(const bf16_t* __restrict__ x, const bf16_t* __restrict__ r, const bf16_t* __restrict__ w, bf16_t* __restrict__ sum, bf16_t* __restrict__ out, int width, float eps) {
    __shared__ float scratch[32];
    size_t g = blockIdx.x;
    const bf16_t *xr = x + g * width, *rr_ = r + g * width;
    pdl_sync();
    float ss = 0.0f;
    if (threadIdx.x < NORM_THREADS)
#pragma unroll 16
        for (int c = threadIdx.x; c < width; c += NORM_THREADS) {
            float v = sum_at(xr, rr_, c);
            ss += v * v;
        }
    ss = block_sum(ss, scratch);
    float rr = rsqrtf(ss / (float)width + eps);
    for (int c = threadIdx.x; c < width; c += blockDim.x) {
        float v = sum_at(xr, rr_, c);
        sum[g * width + c] = f2bf(v);
        out[g * width + c] = f2bf(bf2f(w[c]) * r16(v * rr));
    }
}
