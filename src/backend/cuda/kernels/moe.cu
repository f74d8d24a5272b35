// Expert dispatch helpers. Routing (softmax, top-k, renormalisation) is
// decided on the host from the router logits; these move rows.

// dst[i] = src[idx[i]]
extern "C" __global__ void gather_rows_bf16(const bf16_t* src, const int* idx, bf16_t* dst, int width) {
    size_t i = blockIdx.x;
    size_t s = idx[i];
    for (int c = threadIdx.x; c < width; c += blockDim.x) dst[i * width + c] = src[s * width + c];
}

// out[idx[i]] = bf16(out[idx[i]] + bf16(y[i] * w[i])): one launch per expert,
// in ascending expert order, as transformers' index_add_ accumulates.
extern "C" __global__ void moe_accumulate_bf16(bf16_t* out, const bf16_t* y, const int* idx, const float* w, int width) {
    size_t i = blockIdx.x;
    size_t o = idx[i];
    float wi = w[i];
    for (int c = threadIdx.x; c < width; c += blockDim.x)
        out[o * width + c] = f2bf(bf2f(out[o * width + c]) + r16(bf2f(y[i * width + c]) * wi));
}
