// Eager causal GQA attention with transformers' bf16 rounding:
// s = bf16(bf16(q.k) * scale); softmax in f32; p = bf16(e / sum);
// out = bf16(sum_j p_j v_j) with f32 accumulation in key order.
// One block per (token, head); scores in dynamic shared memory.
extern "C" __global__ void attention_bf16(
    const bf16_t* q, const bf16_t* kc, const bf16_t* vc, bf16_t* out, const int* pos,
    int n_heads, int n_kv, int head_dim, float scale) {
    __shared__ float scratch[32];
    __shared__ float qs[256];
    extern __shared__ float sc[];
    int r = blockIdx.x, h = blockIdx.y, kvh = h / (n_heads / n_kv);
    int qd = n_heads * head_dim, kd = n_kv * head_dim;
    int len = pos[r] + 1;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) qs[d] = bf2f(q[(size_t)r * qd + (size_t)h * head_dim + d]);
    __syncthreads();
    float m = NEG_INF;
    for (int j = threadIdx.x; j < len; j += blockDim.x) {
        const bf16_t* kr = kc + (size_t)j * kd + (size_t)kvh * head_dim;
        float dot = 0.0f;
        for (int d = 0; d < head_dim; d++) dot += qs[d] * bf2f(kr[d]);
        float s = r16(r16(dot) * scale);
        sc[j] = s;
        m = fmaxf(m, s);
    }
    m = block_max(m, scratch);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < len; j += blockDim.x) {
        float e = expf(sc[j] - m);
        sc[j] = e;
        sum += e;
    }
    sum = block_sum(sum, scratch);
    for (int j = threadIdx.x; j < len; j += blockDim.x) sc[j] = r16(sc[j] / sum);
    __syncthreads();
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float acc = 0.0f;
        for (int j = 0; j < len; j++) acc += sc[j] * bf2f(vc[(size_t)j * kd + (size_t)kvh * head_dim + d]);
        out[(size_t)r * qd + (size_t)h * head_dim + d] = f2bf(acc);
    }
}
