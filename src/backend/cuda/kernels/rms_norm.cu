// RMSNorm of each `width`-element group, transformers' bf16 rounding:
// n = bf16(x * rsqrt(mean(x^2) + eps)); out = bf16(w * n). One block per group.
extern "C" __global__ void rms_norm_bf16(const bf16_t* x, const bf16_t* w, bf16_t* out, int width, float eps) {
    __shared__ float scratch[32];
    size_t g = blockIdx.x;
    const bf16_t* xr = x + g * width;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < width; c += blockDim.x) {
        float v = bf2f(xr[c]);
        ss += v * v;
    }
    ss = block_sum(ss, scratch);
    float r = rsqrtf(ss / (float)width + eps);
    for (int c = threadIdx.x; c < width; c += blockDim.x) out[g * width + c] = f2bf(bf2f(w[c]) * r16(bf2f(xr[c]) * r));
}

// Residual add then RMSNorm of the sum, in one launch: sum = bf16(x + r)
// (written out: it is the residual stream) and out = rms_norm(sum), with the
// same block size and order as rms_norm_bf16, so the bits equal the two
// separate launches'.
extern "C" __global__ void add_rms_norm_bf16(const bf16_t* x, const bf16_t* r, const bf16_t* w, bf16_t* sum, bf16_t* out, int width, float eps) {
    __shared__ float scratch[32];
    size_t g = blockIdx.x;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < width; c += blockDim.x) {
        bf16_t s = f2bf(bf2f(x[g * width + c]) + bf2f(r[g * width + c]));
        sum[g * width + c] = s;
        float v = bf2f(s);
        ss += v * v;
    }
    ss = block_sum(ss, scratch);
    float rr = rsqrtf(ss / (float)width + eps);
    for (int c = threadIdx.x; c < width; c += blockDim.x) out[g * width + c] = f2bf(bf2f(w[c]) * r16(bf2f(sum[g * width + c]) * rr));
}
