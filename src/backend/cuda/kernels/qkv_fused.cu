// The fused path: for one token and one head slot (q heads, then k heads,
// then v heads of the packed weight), project with f32 accumulation, RMS-
// normalise q and k in f32, rotate with unrounded f32 cos/sin, round once.
// Block = head_dim threads (thread d owns output element d); grid =
// (tokens, n_heads + 2 * n_kv). Every sum has a fixed order: no atomics,
// so the kernel is bitwise deterministic by construction.
extern "C" __global__ void qkv_fused_bf16(
    const bf16_t* x, const bf16_t* w, const bf16_t* qn, const bf16_t* kn,
    bf16_t* q, bf16_t* k, bf16_t* v, const int* pos,
    int hidden, int n_heads, int n_kv, int head_dim, float eps, float theta) {
    __shared__ float scratch[32];
    extern __shared__ float vals[];
    int r = blockIdx.x, slot = blockIdx.y, d = threadIdx.x;
    int qd = n_heads * head_dim, kd = n_kv * head_dim;
    size_t row = (size_t)slot * head_dim + d; // row of the packed weight
    const bf16_t* xr = x + (size_t)r * hidden;
    const bf16_t* wr = w + row * hidden;
    float acc = 0.0f;
    for (int i = 0; i < hidden; i++) acc += bf2f(xr[i]) * bf2f(wr[i]);
    if (slot >= n_heads + n_kv) { // v: plain projection
        v[(size_t)r * kd + (slot - n_heads - n_kv) * head_dim + d] = f2bf(acc);
        return;
    }
    bool is_q = slot < n_heads;
    float ss = block_sum(acc * acc, scratch);
    float rr = rsqrtf(ss / (float)head_dim + eps);
    float nv = acc * rr * bf2f(is_q ? qn[d] : kn[d]);
    vals[d] = nv;
    __syncthreads();
    int half = head_dim / 2, i = d % half;
    float inv = 1.0f / powf(theta, (float)(2 * i) / (float)head_dim);
    float a = inv * (float)pos[r];
    float c = cosf(a), s = sinf(a);
    float out = d < half ? vals[d] * c - vals[d + half] * s : vals[d] * c + vals[d - half] * s;
    if (is_q) q[(size_t)r * qd + (size_t)slot * head_dim + d] = f2bf(out);
    else k[(size_t)r * kd + (size_t)(slot - n_heads) * head_dim + d] = f2bf(out);
}
