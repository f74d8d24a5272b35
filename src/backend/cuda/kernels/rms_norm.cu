// RMSNorm of each `width`-element group, transformers' bf16 rounding:
// n = bf16(x * rsqrt(mean(x^2) + eps)); out = bf16(w * n). One block of
// NORM_THREADS per group; thread t owns elements t, t + NORM_THREADS, ...
// and adds their squares in that order, then block_sum: the order (and so
// the bits) depend on the width only.
//
// Latency, not bandwidth, is the cost here (a decode step normalises one
// row): up to NORM_HELD elements per thread are loaded at once, with no
// branch between the loads (indices past the width read the last element
// and are discarded), and the weights are requested before pdl_sync, so a
// group costs about two memory round trips. Wider groups loop for the rest.
#define NORM_THREADS 128
#define NORM_HELD 32

__device__ __forceinline__ void norm_weights(const bf16_t* __restrict__ w, int width, bf16_t* wb) {
#pragma unroll
    for (int i = 0; i < NORM_HELD; i++) wb[i] = w[min((int)threadIdx.x + i * NORM_THREADS, width - 1)];
}

__device__ __forceinline__ void norm_load(const bf16_t* __restrict__ xr, int width, float* held) {
    bf16_t b[NORM_HELD];
#pragma unroll
    for (int i = 0; i < NORM_HELD; i++) b[i] = xr[min((int)threadIdx.x + i * NORM_THREADS, width - 1)];
#pragma unroll
    for (int i = 0; i < NORM_HELD; i++) held[i] = (int)threadIdx.x + i * NORM_THREADS < width ? bf2f(b[i]) : 0.0f;
}

// Squares of a thread's held elements in order, then of the rest.
__device__ __forceinline__ float norm_squares(const bf16_t* __restrict__ xr, int width, const float* held) {
    float ss = 0.0f;
#pragma unroll
    for (int i = 0; i < NORM_HELD; i++)
        if ((int)threadIdx.x + i * NORM_THREADS < width) ss += held[i] * held[i];
    for (int c = threadIdx.x + NORM_HELD * NORM_THREADS; c < width; c += NORM_THREADS) {
        float v = bf2f(xr[c]);
        ss += v * v;
    }
    return ss;
}

__device__ __forceinline__ void norm_store(const bf16_t* __restrict__ xr, const bf16_t* __restrict__ w, bf16_t* __restrict__ out, int width, float rr, const float* held, const bf16_t* wb) {
#pragma unroll
    for (int i = 0; i < NORM_HELD; i++) {
        int c = threadIdx.x + i * NORM_THREADS;
        if (c < width) out[c] = f2bf(bf2f(wb[i]) * r16(held[i] * rr));
    }
    for (int c = threadIdx.x + NORM_HELD * NORM_THREADS; c < width; c += NORM_THREADS)
        out[c] = f2bf(bf2f(w[c]) * r16(bf2f(xr[c]) * rr));
}

extern "C" __global__ void rms_norm_bf16(const bf16_t* __restrict__ x, const bf16_t* __restrict__ w, bf16_t* __restrict__ out, int width, float eps) {
    __shared__ float scratch[32];
    float held[NORM_HELD];
    bf16_t wb[NORM_HELD];
    size_t g = blockIdx.x;
    const bf16_t* xr = x + g * width;
    norm_weights(w, width, wb);
    pdl_sync();
    norm_load(xr, width, held);
    float ss = block_sum(norm_squares(xr, width, held), scratch);
    float r = rsqrtf(ss / (float)width + eps);
    norm_store(xr, w, out + g * width, width, r, held, wb);
}

// Residual add then RMSNorm of the sum, in one launch: sum = bf16(x + r)
// (written out: it is the residual stream) and out = rms_norm(sum), with the
// same block size and order as rms_norm_bf16, so the bits equal the two
// separate launches'.
extern "C" __global__ void add_rms_norm_bf16(const bf16_t* __restrict__ x, const bf16_t* __restrict__ r, const bf16_t* __restrict__ w, bf16_t* __restrict__ sum, bf16_t* __restrict__ out, int width, float eps) {
    __shared__ float scratch[32];
    float held[NORM_HELD], other[NORM_HELD];
    bf16_t wb[NORM_HELD];
    size_t g = blockIdx.x;
    bf16_t* sr = sum + g * width;
    norm_weights(w, width, wb);
    pdl_sync();
    norm_load(x + g * width, width, held);
    norm_load(r + g * width, width, other);
#pragma unroll
    for (int i = 0; i < NORM_HELD; i++) {
        int c = threadIdx.x + i * NORM_THREADS;
        held[i] = bf2f(f2bf(held[i] + other[i]));
        if (c < width) sr[c] = f2bf(held[i]);
    }
    for (int c = threadIdx.x + NORM_HELD * NORM_THREADS; c < width; c += NORM_THREADS)
        sr[c] = f2bf(bf2f(x[g * width + c]) + bf2f(r[g * width + c]));
    // The tail of the sum is read back by the thread that wrote it.
    float ss = block_sum(norm_squares(sr, width, held), scratch);
    float rr = rsqrtf(ss / (float)width + eps);
    norm_store(sr, w, out + g * width, width, rr, held, wb);
}
