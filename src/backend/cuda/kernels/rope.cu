// NeoX RoPE with transformers' bf16 rounding: f32 inverse frequencies and
// angle, cos/sin rounded to bf16, each product and the sum rounded.
// One thread per (row, head, i < head_dim / 2).
extern "C" __global__ void rope_bf16(const bf16_t* x, bf16_t* out, const int* pos, int rows, int width, int head_dim, float theta) {
    pdl_sync();
    int half = head_dim / 2, heads = width / head_dim;
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)rows * heads * half) return;
    int i = idx % half;
    size_t hh = idx / half;
    int r = hh / heads, h = hh % heads;
    float inv = 1.0f / powf(theta, (float)(2 * i) / (float)head_dim);
    float a = inv * (float)pos[r];
    float c = r16(cosf(a)), s = r16(sinf(a));
    size_t base = (size_t)r * width + (size_t)h * head_dim;
    float x1 = bf2f(x[base + i]), x2 = bf2f(x[base + i + half]);
    out[base + i] = f2bf(r16(x1 * c) + r16(-x2 * s));
    out[base + i + half] = f2bf(r16(x2 * c) + r16(x1 * s));
}
