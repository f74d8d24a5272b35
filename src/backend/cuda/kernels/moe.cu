// Expert dispatch helpers. Routing (softmax, top-k, renormalisation) is
// decided on the host from the router logits; these move rows.

// dst[i] = src[idx[i]]
extern "C" __global__ void gather_rows_bf16(const bf16_t* src, const int* idx, bf16_t* dst, int width) {
    pdl_sync();
    size_t i = blockIdx.x;
    size_t s = idx[i];
    for (int c = threadIdx.x; c < width; c += blockDim.x) dst[i * width + c] = src[s * width + c];
}

// out[idx[i]] = bf16(out[idx[i]] + bf16(y[i] * w[i])): one launch per expert,
// in ascending expert order, as transformers' index_add_ accumulates.
extern "C" __global__ void moe_accumulate_bf16(bf16_t* out, const bf16_t* y, const int* idx, const float* w, int width) {
    pdl_sync();
    size_t i = blockIdx.x;
    size_t o = idx[i];
    float wi = w[i];
    for (int c = threadIdx.x; c < width; c += blockDim.x)
        out[o * width + c] = f2bf(bf2f(out[o * width + c]) + r16(bf2f(y[i * width + c]) * wi));
}

// Decode-step MoE on the device, so a MoE step can be recorded (CUDA graphs)
// and its experts run as one grouped launch per product.
//
// Routing of one token, as backend::route does it on the host: softmax in
// f32 (sequential sum), top-k by probability with ties to the lower expert,
// renormalised over the selection (summed in selection order) if asked,
// weights rounded to bf16, selection sorted by expert index. One block,
// a thread per expert (n_experts <= 1024): each finds its probability and
// its rank; thread 0 does the short sequential parts. expf may differ from
// the host's exp in the last ulp of a probability; the weights are rounded
// to bf16 afterwards.
extern "C" __global__ void moe_route_bf16(const bf16_t* logits, int n_experts, int top_k, int renorm, int* sel, float* wsel) {
    __shared__ float p[1024];
    __shared__ float scratch[32];
    __shared__ int by_rank[64];
    pdl_sync();
    int i = threadIdx.x;
    float l = i < n_experts ? bf2f(logits[i]) : NEG_INF;
    float m = block_max(l, scratch);
    float e = i < n_experts ? expf(l - m) : 0.0f;
    p[i] = e;
    __syncthreads();
    if (i == 0) {
        float s = 0.0f;
        for (int j = 0; j < n_experts; j++) s += p[j];
        scratch[0] = s;
    }
    __syncthreads();
    float pi = e / scratch[0];
    __syncthreads();
    p[i] = pi;
    __syncthreads();
    if (i < n_experts) {
        int rank = 0;
        for (int j = 0; j < n_experts; j++) rank += (p[j] > pi) || (p[j] == pi && j < i);
        if (rank < top_k) by_rank[rank] = i;
    }
    __syncthreads();
    if (i == 0) {
        int idx[64];
        float w[64];
        for (int r = 0; r < top_k; r++) { idx[r] = by_rank[r]; w[r] = p[idx[r]]; }
        if (renorm) {
            float t = 0.0f;
            for (int r = 0; r < top_k; r++) t += w[r];
            for (int r = 0; r < top_k; r++) w[r] = w[r] / t;
        }
        for (int r = 0; r < top_k; r++) w[r] = r16(w[r]);
        for (int a = 1; a < top_k; a++)
            for (int b = a; b > 0 && idx[b - 1] > idx[b]; b--) {
                int ti = idx[b]; idx[b] = idx[b - 1]; idx[b - 1] = ti;
                float tw = w[b]; w[b] = w[b - 1]; w[b - 1] = tw;
            }
        for (int r = 0; r < top_k; r++) { sel[r] = idx[r]; wsel[r] = w[r]; }
    }
}

// h[slot] = bf16(bf16(silu(bf16(x.gate_e))) * bf16(x.up_e)) for the selected
// expert e = sel[slot] (grid.y = slot): the sums of gate_up_swiglu_bf16.
extern "C" __global__ void moe_gate_up_bf16(const bf16_t* x, const unsigned long long* gates, const unsigned long long* ups,
                                            const int* sel, bf16_t* h, int k, int m, int parts) {
    pdl_sync();
    int e = sel[blockIdx.y];
    gate_up_swiglu_row<false>(x, (const bf16_t*)gates[e], (const bf16_t*)ups[e], h + (size_t)blockIdx.y * m, k, m, parts);
}

// y[slot] = bf16(h[slot] . down_e) for e = sel[slot]: the sums of gemv1_bf16.
extern "C" __global__ void moe_down_bf16(const bf16_t* h, const unsigned long long* downs, const int* sel, bf16_t* y, int k, int m, int parts) {
    pdl_sync();
    int slot = blockIdx.y;
    gemv_body<1>(h + (size_t)slot * k, (const bf16_t*)downs[sel[slot]], y + (size_t)slot * m, 1, k, m, parts, 0, blockIdx.x);
}

// out = sum over the selection in ascending expert order, rounded after
// each add: out = bf16(out + bf16(y[slot] * w[slot])), from zero (as
// moe_accumulate_bf16 launched once per expert).
extern "C" __global__ void moe_combine_bf16(const bf16_t* y, const float* wsel, bf16_t* out, int width, int top_k) {
    pdl_sync();
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < width; c += gridDim.x * blockDim.x) {
        float acc = 0.0f;
        for (int j = 0; j < top_k; j++) acc = r16(acc + r16(bf2f(y[(size_t)j * width + c]) * wsel[j]));
        out[c] = f2bf(acc);
    }
}
