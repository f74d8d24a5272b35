// Causal GQA attention with transformers' eager bf16 rounding, split over
// chunks of ATTN_CHUNK keys so long contexts use the whole GPU:
//   s = bf16(bf16(q.k) * scale); e = exp(s - max) in f32;
//   p = bf16(e / sum e); out = bf16(sum_j p_j v_j), f32 accumulation.
// Three launches over grid (tokens, heads, chunks); scratch in global
// memory: S [tokens * heads, stride] scores then exponentials, M and Z the
// per-chunk max and sum, P the per-chunk partial outputs. Row r attends to
// keys 0..=pos[r] (read on the device, so a recorded launch replays at any
// position); chunks past that return at once.
#define ATTN_CHUNK 64

__device__ __forceinline__ int chunks_of(int len) { return (len + ATTN_CHUNK - 1) / ATTN_CHUNK; }

// s = bf16(bf16(q.k) * scale) for one key (16-byte loads over head_dim, in
// order). Shared by attn_scores_bf16 and attn_decode_bf16: one expression,
// one rounding sequence. Unrolled 16 deep: a 128-wide key's loads go out
// together (one memory round trip, not four).
__device__ __forceinline__ float key_score(const float* qs, const bf16_t* key, int head_dim, float scale) {
    const uint4* kr = (const uint4*)key;
    float dot = 0.0f;
#pragma unroll 16
    for (int i = 0; i < head_dim / 8; i++) {
        uint4 kv = kr[i];
        unsigned int w[4] = {kv.x, kv.y, kv.z, kv.w};
#pragma unroll
        for (int e = 0; e < 4; e++) {
            dot += qs[8 * i + 2 * e] * __uint_as_float(w[e] << 16);
            dot += qs[8 * i + 2 * e + 1] * __uint_as_float(w[e] & 0xffff0000u);
        }
    }
    return r16(r16(dot) * scale);
}

// One key group's share of a chunk's output element d: keys g, g + groups,
// ... of the chunk's n, probabilities p, values vb (element d of key 0).
// Unrolled 32 deep (a 64-key chunk over two key groups in one go).
__device__ __forceinline__ float chunk_values(const float* p, const bf16_t* vb, int n, int kd, int g, int groups) {
    float acc = 0.0f;
#pragma unroll 32
    for (int j = g; j < n; j += groups) acc += p[j] * bf2f(vb[(size_t)j * kd]);
    return acc;
}

// Pass 1: one thread per key (16-byte loads over head_dim, in order, so
// every key's loads are in flight at once), chunk max. Block = ATTN_CHUNK.
extern "C" __global__ void attn_scores_bf16(
    const bf16_t* q, const bf16_t* kc, float* S, float* M, const int* pos,
    int n_heads, int n_kv, int head_dim, int stride, int max_chunks, float scale) {
    __shared__ float scratch[32];
    __shared__ float qs[256];
    pdl_sync();
    int r = blockIdx.x, h = blockIdx.y, c = blockIdx.z;
    int len = pos[r] + 1, kvh = h / (n_heads / n_kv);
    if (c * ATTN_CHUNK >= len) return;
    int qd = n_heads * head_dim, kd = n_kv * head_dim;
    size_t rh = (size_t)r * n_heads + h;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) qs[d] = bf2f(q[(size_t)r * qd + (size_t)h * head_dim + d]);
    __syncthreads();
    int j = c * ATTN_CHUNK + threadIdx.x;
    float m = NEG_INF;
    if (j < len) {
        float s = key_score(qs, kc + (size_t)j * kd + (size_t)kvh * head_dim, head_dim, scale);
        S[rh * stride + j] = s;
        m = s;
    }
    m = block_max(m, scratch);
    if (threadIdx.x == 0) M[rh * max_chunks + c] = m;
}

// Pass 2: the row's max over chunk maxima, exponentials, chunk sums.
// Block = ATTN_CHUNK (one thread per key).
extern "C" __global__ void attn_exp_bf16(
    float* S, const float* M, float* Z, const int* pos, int n_heads, int stride, int max_chunks) {
    __shared__ float scratch[32];
    pdl_sync();
    int r = blockIdx.x, h = blockIdx.y, c = blockIdx.z;
    int len = pos[r] + 1;
    if (c * ATTN_CHUNK >= len) return;
    size_t rh = (size_t)r * n_heads + h;
    float m = NEG_INF;
    for (int i = 0; i < chunks_of(len); i++) m = fmaxf(m, M[rh * max_chunks + i]);
    int end = min(len, (c + 1) * ATTN_CHUNK);
    float sum = 0.0f;
    for (int j = c * ATTN_CHUNK + threadIdx.x; j < end; j += blockDim.x) {
        float e = expf(S[rh * stride + j] - m);
        S[rh * stride + j] = e;
        sum += e;
    }
    sum = block_sum(sum, scratch);
    if (threadIdx.x == 0) Z[rh * max_chunks + c] = sum;
}

// Pass 3: probabilities, the chunk's partial output, then the combination
// over chunks. `atomic_combine` == 0 (deterministic mode): partials go to P
// and the block finishing a row last adds them in chunk order. Otherwise
// (fast mode): partials are added into the f32 accumulator O with atomics,
// in arrival order, and the last block rounds O. Threads split into
// blockDim / head_dim key groups (each owns one output element of a group),
// combined in group order. When head_dim does not divide the block (48, 80,
// 96) the threads past the last whole group compute a share nobody reads.
extern "C" __global__ void attn_out_bf16(
    const float* S, const float* Z, const bf16_t* vc, float* P, float* O, bf16_t* out,
    unsigned int* counters, const int* pos,
    int n_heads, int n_kv, int head_dim, int stride, int max_chunks, int atomic_combine) {
    __shared__ float part[1024];
    pdl_sync();
    int r = blockIdx.x, h = blockIdx.y, c = blockIdx.z;
    int len = pos[r] + 1, nch = chunks_of(len);
    if (c >= nch) return;
    int kvh = h / (n_heads / n_kv), qd = n_heads * head_dim, kd = n_kv * head_dim;
    size_t rh = (size_t)r * n_heads + h;
    float sum = 0.0f;
    for (int i = 0; i < nch; i++) sum += Z[rh * max_chunks + i];
    __shared__ float p[ATTN_CHUNK];
    int end = min(len, (c + 1) * ATTN_CHUNK), n = end - c * ATTN_CHUNK;
    if (threadIdx.x < n) p[threadIdx.x] = r16(S[rh * stride + c * ATTN_CHUNK + threadIdx.x] / sum);
    __syncthreads();
    int groups = blockDim.x / head_dim, g = threadIdx.x / head_dim, d = threadIdx.x % head_dim;
    const bf16_t* vb = vc + (size_t)c * ATTN_CHUNK * kd + (size_t)kvh * head_dim + d;
    part[threadIdx.x] = chunk_values(p, vb, n, kd, g, groups);
    __syncthreads();
    if (g == 0) {
        float t = 0.0f;
        for (int i = 0; i < groups; i++) t += part[i * head_dim + d];
        if (atomic_combine) atomicAdd(&O[rh * head_dim + d], t);
        else P[(rh * max_chunks + c) * head_dim + d] = t;
    }
    if (!last_block_of(&counters[rh], nch)) return;
    if (g == 0) {
        float t = 0.0f;
        if (atomic_combine) {
            t = __ldcg(&O[rh * head_dim + d]);
            O[rh * head_dim + d] = 0.0f;
        } else {
            for (int i = 0; i < nch; i++) t += __ldcg(&P[(rh * max_chunks + i) * head_dim + d]);
        }
        out[(size_t)r * qd + (size_t)h * head_dim + d] = f2bf(t);
    }
}

// A decode step (one query row) in one launch: one block per head walks
// every chunk of its row itself, with the per-chunk arithmetic of the three
// passes above (same helpers, same orders: chunk sums as block_sum over two
// warps, chunk outputs over 256-thread key groups, chunks added in order),
// so its output equals theirs bit for bit. The backend uses it for short
// caches, where three launches cost more than the work; long contexts keep
// the split over the GPU. Block = 512 threads (two 256-thread halves take
// two chunks at a time); dynamic shared memory: the row's scores
// (`stride` floats, at least the row's length) and its half-chunk sums
// (stride / 32 + 1).
// The body, for head h of one query row q at position `at` over the cache
// (kc, vc); out is that row's output. Shared by the one-row kernel and the
// batched one, so a sequence's bits are the same alone and in a batch.
__device__ __forceinline__ void attn_decode_row(
    const bf16_t* q, const bf16_t* kc, const bf16_t* vc, bf16_t* out, int at, int h,
    int n_heads, int n_kv, int head_dim, int stride, float scale) {
    extern __shared__ float S[];
    __shared__ float qs[256];
    __shared__ float scratch[32];
    __shared__ float part[512];
    float* H = S + stride;
    int kvh = h / (n_heads / n_kv), tid = threadIdx.x;
    int lane = tid & 31, warp = tid >> 5;
    int len = at + 1, nch = chunks_of(len), kd = n_kv * head_dim;
    for (int d = tid; d < head_dim; d += blockDim.x) qs[d] = bf2f(q[(size_t)h * head_dim + d]);
    __syncthreads();
    const bf16_t* kb = kc + (size_t)kvh * head_dim;
    float m = NEG_INF;
    for (int j = tid; j < len; j += blockDim.x) {
        float s = key_score(qs, kb + (size_t)j * kd, head_dim, scale);
        S[j] = s;
        m = fmaxf(m, s);
    }
    m = block_max(m, scratch);
    // Exponentials; each warp's butterfly covers one half chunk (32 keys).
    for (int base = 0; base < len; base += blockDim.x) {
        int j = base + tid;
        float e = 0.0f;
        if (j < len) {
            e = expf(S[j] - m);
            S[j] = e;
        }
        e = warp_sum(e);
        if (lane == 0 && base + 32 * warp < len) H[(base >> 5) + warp] = e;
    }
    __syncthreads();
    // The row's sum: chunk sums (two halves added, as block_sum adds its
    // two warps) in chunk order.
    float sum = 0.0f;
    for (int c = 0; c < nch; c++) {
        bool second = c * ATTN_CHUNK + 32 < len;
        sum += H[2 * c] + (second ? H[2 * c + 1] : 0.0f);
    }
    for (int j = tid; j < len; j += blockDim.x) S[j] = r16(S[j] / sum);
    __syncthreads();
    int half = tid >> 8, lt = tid & 255, groups = 256 / head_dim, g = lt / head_dim, d = lt % head_dim;
    float total = 0.0f;
    for (int c0 = 0; c0 < nch; c0 += 2) {
        int c = c0 + half;
        float acc = 0.0f;
        if (c < nch) {
            int n = min(len, (c + 1) * ATTN_CHUNK) - c * ATTN_CHUNK;
            const bf16_t* vb = vc + (size_t)c * ATTN_CHUNK * kd + (size_t)kvh * head_dim + d;
            acc = chunk_values(S + c * ATTN_CHUNK, vb, n, kd, g, groups);
        }
        part[tid] = acc;
        __syncthreads();
        if (half == 0 && g == 0) {
            float t = 0.0f;
            for (int i = 0; i < groups; i++) t += part[i * head_dim + d];
            total += t;
            if (c0 + 1 < nch) {
                t = 0.0f;
                for (int i = 0; i < groups; i++) t += part[256 + i * head_dim + d];
                total += t;
            }
        }
        __syncthreads();
    }
    if (half == 0 && g == 0) out[(size_t)h * head_dim + d] = f2bf(total);
}

extern "C" __global__ void attn_decode_bf16(
    const bf16_t* q, const bf16_t* kc, const bf16_t* vc, bf16_t* out, const int* pos,
    int n_heads, int n_kv, int head_dim, int stride, float scale) {
    pdl_sync();
    attn_decode_row(q, kc, vc, out, pos[0], blockIdx.x, n_heads, n_kv, head_dim, stride, scale);
}

// A decode step's attention spread over a thread-block cluster per head
// (Hopper and later): attn_decode_bf16 runs a head in one block, so a
// qwen3-0.6b step's attention keeps 16 of 132 SMs busy and costs a third of
// the step (docs/benchmark_results/small-model-decode-nvidia-h200.md).
// Block `rank` of head h's cluster of ATTN_CLUSTER takes chunks rank,
// rank + ATTN_CLUSTER, ... (ATTN_CLUSTER_SLOTS at most), and the blocks
// meet through distributed shared memory where a row-wide value is formed:
// the max (exact in any order), the sum of the half-chunk sums (read from
// their owners in chunk order), and the chunk outputs, which rank 0 adds in
// chunk order. Every value is the same sequence of operations as in
// attn_decode_row and the three passes, so the bits are theirs. Block =
// 256 threads: four 64-key chunk slots while scoring, then one chunk at a
// time over 256 / head_dim key groups, as attn_decode_row's halves.
#define ATTN_CLUSTER 8
#define ATTN_CLUSTER_SLOTS 4
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define ATTN_CLUSTER_DIMS __cluster_dims__(ATTN_CLUSTER, 1, 1)
#else
#define ATTN_CLUSTER_DIMS
#endif
extern "C" __global__ void __launch_bounds__(256) ATTN_CLUSTER_DIMS attn_decode_cluster_bf16(
    const bf16_t* q, const bf16_t* kc, const bf16_t* vc, bf16_t* out, const int* pos,
    int n_heads, int n_kv, int head_dim, float scale) {
    __shared__ float qs[256];
    __shared__ float scratch[32];
    __shared__ float S[ATTN_CLUSTER_SLOTS][ATTN_CHUNK];
    __shared__ float H[2 * ATTN_CLUSTER_SLOTS];
    __shared__ float T[ATTN_CLUSTER_SLOTS][256];
    __shared__ float part[256];
    __shared__ float row_max, row_sum;
    pdl_sync();
    int rank = (int)cluster_rank(), h = blockIdx.y, tid = threadIdx.x;
    int lane = tid & 31, warp = tid >> 5;
    int len = pos[0] + 1, nch = chunks_of(len);
    int kvh = h / (n_heads / n_kv), kd = n_kv * head_dim;
    for (int d = tid; d < head_dim; d += blockDim.x) qs[d] = bf2f(q[(size_t)h * head_dim + d]);
    __syncthreads();
    // Scores: thread tid takes key tid % 64 of slot tid / 64.
    int slot = tid / ATTN_CHUNK, c = rank + ATTN_CLUSTER * slot, j = c * ATTN_CHUNK + tid % ATTN_CHUNK;
    bool mine = c < nch && j < len;
    float m = NEG_INF;
    if (mine) {
        float sc = key_score(qs, kc + (size_t)j * kd + (size_t)kvh * head_dim, head_dim, scale);
        S[slot][tid % ATTN_CHUNK] = sc;
        m = sc;
    }
    m = block_max(m, scratch);
    if (tid == 0) row_max = m;
    cluster_sync();
    if (tid == 0) {
        float r = NEG_INF;
        for (int b = 0; b < ATTN_CLUSTER; b++) r = fmaxf(r, ld_cluster(&row_max, b));
        scratch[0] = r;
    }
    __syncthreads();
    m = scratch[0];
    // Exponentials; warp w's butterfly covers half chunk w % 2 of slot w / 2.
    float e = 0.0f;
    if (mine) {
        e = expf(S[slot][tid % ATTN_CHUNK] - m);
        S[slot][tid % ATTN_CHUNK] = e;
    }
    e = warp_sum(e);
    if (lane == 0 && c < nch && c * ATTN_CHUNK + 32 * (warp & 1) < len) H[warp] = e;
    cluster_sync();
    // The row's sum: chunk sums (two halves added) in chunk order.
    if (tid == 0) {
        float sum = 0.0f;
        for (int cc = 0; cc < nch; cc++) {
            int owner = cc % ATTN_CLUSTER, at = 2 * (cc / ATTN_CLUSTER);
            bool second = cc * ATTN_CHUNK + 32 < len;
            sum += ld_cluster(&H[at], owner) + (second ? ld_cluster(&H[at + 1], owner) : 0.0f);
        }
        row_sum = sum;
    }
    __syncthreads();
    if (mine) S[slot][tid % ATTN_CHUNK] = r16(S[slot][tid % ATTN_CHUNK] / row_sum);
    __syncthreads();
    // Each chunk's output over 256 / head_dim key groups, as a half of
    // attn_decode_row's block takes it.
    int groups = 256 / head_dim, g = tid / head_dim, d = tid % head_dim;
    for (int s = 0; s < ATTN_CLUSTER_SLOTS; s++) {
        int cs = rank + ATTN_CLUSTER * s;
        if (cs >= nch) break;
        int n = min(len, (cs + 1) * ATTN_CHUNK) - cs * ATTN_CHUNK;
        const bf16_t* vb = vc + (size_t)cs * ATTN_CHUNK * kd + (size_t)kvh * head_dim + d;
        part[tid] = chunk_values(S[s], vb, n, kd, g, groups);
        __syncthreads();
        if (g == 0) {
            float t = 0.0f;
            for (int i = 0; i < groups; i++) t += part[i * head_dim + d];
            T[s][d] = t;
        }
        __syncthreads();
    }
    cluster_sync();
    if (rank == 0 && g == 0) {
        float total = 0.0f;
        for (int cc = 0; cc < nch; cc++) total += ld_cluster(&T[cc / ATTN_CLUSTER][d], cc % ATTN_CLUSTER);
        out[(size_t)h * head_dim + d] = f2bf(total);
    }
    // Peers' shared memory must outlive rank 0's reads.
    cluster_sync();
}

// A batched decode step: row r of q is sequence r's query at position
// pos[r] over its own cache, whose key and value addresses are caches[r]
// and caches[batch + r]. Block (h, r) runs attn_decode_row; `stride` (the
// shared memory's score length) covers the longest row.
extern "C" __global__ void attn_decode_batch_bf16(
    const bf16_t* q, const unsigned long long* caches, bf16_t* out, const int* pos, int batch,
    int n_heads, int n_kv, int head_dim, int stride, float scale) {
    pdl_sync();
    int r = blockIdx.y;
    size_t qd = (size_t)n_heads * head_dim;
    attn_decode_row(q + r * qd, (const bf16_t*)caches[r], (const bf16_t*)caches[batch + r], out + r * qd,
                    pos[r], blockIdx.x, n_heads, n_kv, head_dim, stride, scale);
}
