// Residual add and SwiGLU, rounded like transformers' bf16 tensors.
extern "C" __global__ void add_bf16(const bf16_t* a, const bf16_t* b, bf16_t* out, size_t n) {
    pdl_sync();
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = f2bf(bf2f(a[i]) + bf2f(b[i]));
}

// out = bf16(bf16(silu(gate)) * up)
extern "C" __global__ void swiglu_bf16(const bf16_t* gate, const bf16_t* up, bf16_t* out, size_t n) {
    pdl_sync();
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float g = bf2f(gate[i]);
        out[i] = f2bf(r16(g / (1.0f + expf(-g))) * bf2f(up[i]));
    }
}
