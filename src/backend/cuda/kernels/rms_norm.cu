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
