// The fused path in one kernel: q, k, v projected from the packed weight
// ([q heads | k heads | v heads] rows), q and k RMS-normalised per head in
// f32, rotated with unrounded f32 cos/sin, each output rounded once; k and
// v optionally written straight into the KV cache at their positions.
//
// Phase 1 spreads the projection over the whole GPU: block = 8 warps, each
// row of the packed weight taken by `parts` warps (as in gemv_bf16, so the
// projection sums in the same fixed order), raw f32 results to `raw`
// [tokens, rows]. Phase 2 runs in the block that finishes a head slot last
// (last_block_of): it reads that slot's raw values and normalises, rotates
// and stores them for the token group. Every sum has a fixed order and no
// value goes through an atomic, so the kernel is bitwise deterministic, and
// a token's result never depends on the other tokens in the launch.
//
// grid = (row blocks, token groups of ROWS_PER_PASS); counters: one per
// (token group, head slot), zero before the launch and reset by it.

// Phase 2 of one head slot for tokens r0 .. r0 + nr - 1: the slot's f32
// projections from `raw` [tokens, rows], v rounded and stored, q and k
// RMS-normalised per head, rotated and stored (k and v also into the
// cache at their positions where kc / vc are given). One block of BLOCK
// threads, thread d on element d of the head.
__device__ __forceinline__ void qkv_finish_rows(
    int slot, int r0, int nr, const float* raw, const bf16_t* qn, const bf16_t* kn,
    bf16_t* q, bf16_t* k, bf16_t* v, bf16_t* kc, bf16_t* vc, const int* pos,
    int rows, int n_heads, int n_kv, int head_dim, float eps, float theta, float* scratch, float* vals) {
    int qd = n_heads * head_dim, kd = n_kv * head_dim, d = threadIdx.x;
    bool is_v = slot >= n_heads + n_kv, is_q = slot < n_heads;
    int half = head_dim / 2;
    for (int t = r0; t < r0 + nr; t++) {
        float a = d < head_dim ? __ldcg(&raw[(size_t)t * rows + (size_t)slot * head_dim + d]) : 0.0f;
        if (is_v) {
            if (d < head_dim) {
                size_t at = (size_t)(slot - n_heads - n_kv) * head_dim + d;
                bf16_t b = f2bf(a);
                if (v) v[(size_t)t * kd + at] = b;
                if (vc) vc[(size_t)pos[t] * kd + at] = b;
            }
            continue;
        }
        float ss = block_sum(a * a, scratch);
        float rr = rsqrtf(ss / (float)head_dim + eps);
        if (d < head_dim) vals[d] = a * rr * bf2f(is_q ? qn[d] : kn[d]);
        __syncthreads();
        if (d < head_dim) {
            int i = d % half;
            float inv = 1.0f / powf(theta, (float)(2 * i) / (float)head_dim);
            float ang = inv * (float)pos[t];
            float c = cosf(ang), s = sinf(ang);
            float out = d < half ? vals[d] * c - vals[d + half] * s : vals[d] * c + vals[d - half] * s;
            bf16_t b = f2bf(out);
            if (is_q) q[(size_t)t * qd + (size_t)slot * head_dim + d] = b;
            else {
                size_t at = (size_t)(slot - n_heads) * head_dim + d;
                if (k) k[(size_t)t * kd + at] = b;
                if (kc) kc[(size_t)pos[t] * kd + at] = b;
            }
        }
        __syncthreads();
    }
}

// NW rows per warp group (2 for a decode step whose one-row grid would need
// a second wave, as the gate+up pass has; otherwise 1): warp group
// g of a block takes rows g, g + 8 / parts, ... of the block's 8 * NW /
// parts, sharing each activation load between them. A row's sum is the same
// either way (warp_dot adds each row's chunks in the same order), so NW only
// changes how many warps a launch needs: at qwen3-8b, 6144 single-row warps
// do not fit on the GPU at once and a second, mostly idle wave follows.
template <int R, int NW>
__device__ __forceinline__ void qkv_fused_body(
    const bf16_t* x, const bf16_t* w, const bf16_t* qn, const bf16_t* kn,
    bf16_t* q, bf16_t* k, bf16_t* v, bf16_t* kc, bf16_t* vc, const int* pos,
    float* raw, unsigned int* counters,
    int n, int hidden, int n_heads, int n_kv, int head_dim, int parts, float eps, float theta) {
    __shared__ float partial[NW][8][R];
    __shared__ float scratch[32];
    __shared__ float vals[1024];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int groups = 8 / parts, rows_per_block = groups * NW;
    int rows = (n_heads + 2 * n_kv) * head_dim;
    int o = blockIdx.x * rows_per_block + warp / parts, part = warp % parts;
    int r0 = blockIdx.y * R, nr = min(R, n - r0);
    const bf16_t* wr[NW];
#pragma unroll
    for (int i = 0; i < NW; i++) wr[i] = w + (size_t)(o + i * groups) * hidden;
    float acc[NW][R];
    warp_dot<R, NW>(x + (size_t)r0 * hidden, wr, nr, hidden, part, parts, acc);
    if (lane == 0)
        for (int i = 0; i < NW; i++)
            for (int r = 0; r < R; r++) partial[i][warp][r] = acc[i][r];
    __syncthreads();
    if (part == 0 && lane < nr)
        for (int i = 0; i < NW; i++) {
            float t = 0.0f;
            for (int p = 0; p < parts; p++) t += partial[i][warp + p][lane];
            raw[(size_t)(r0 + lane) * rows + o + i * groups] = t;
        }
    int slot = (blockIdx.x * rows_per_block) / head_dim;
    int slots = n_heads + 2 * n_kv;
    if (!last_block_of(&counters[blockIdx.y * slots + slot], head_dim / rows_per_block)) return;

    qkv_finish_rows(slot, r0, nr, raw, qn, kn, q, k, v, kc, vc, pos, rows, n_heads, n_kv, head_dim, eps, theta, scratch, vals);
}

#define QKV_FUSED_ARGS \
    const bf16_t* x, const bf16_t* w, const bf16_t* qn, const bf16_t* kn, \
    bf16_t* q, bf16_t* k, bf16_t* v, bf16_t* kc, bf16_t* vc, const int* pos, \
    float* raw, unsigned int* counters, \
    int n, int hidden, int n_heads, int n_kv, int head_dim, int parts, float eps, float theta
#define QKV_FUSED_PASS x, w, qn, kn, q, k, v, kc, vc, pos, raw, counters, n, hidden, n_heads, n_kv, head_dim, parts, eps, theta

extern "C" __global__ void qkv_fused_bf16(QKV_FUSED_ARGS) { qkv_fused_body<ROWS_PER_PASS, 1>(QKV_FUSED_PASS); }

// One token (a decode step); the same sums as the batched entry point. The
// backend takes the two-row form where the one-row grid would not fit on
// the GPU at once and head_dim is a multiple of its 16 / parts rows per
// block.
extern "C" __global__ void qkv_fused1_bf16(QKV_FUSED_ARGS) { qkv_fused_body<1, 1>(QKV_FUSED_PASS); }
extern "C" __global__ void qkv_fused1_pairs_bf16(QKV_FUSED_ARGS) { qkv_fused_body<1, 2>(QKV_FUSED_PASS); }

// Phase 2 alone, grid (head slots, tokens): the fused path with tensor-core
// products, whose packed projection (gemm_tc*_f32 in linear_tc.cu) has
// left every token's f32 sums in `raw`. The same per-token arithmetic as
// the one-kernel form's phase 2.
extern "C" __global__ void qkv_finish_bf16(
    const float* raw, const bf16_t* qn, const bf16_t* kn, bf16_t* q, bf16_t* k, bf16_t* v,
    bf16_t* kc, bf16_t* vc, const int* pos, int n_heads, int n_kv, int head_dim, float eps, float theta) {
    __shared__ float scratch[32];
    __shared__ float vals[1024];
    pdl_sync();
    int rows = (n_heads + 2 * n_kv) * head_dim;
    qkv_finish_rows(blockIdx.x, blockIdx.y, 1, raw, qn, kn, q, k, v, kc, vc, pos, rows, n_heads, n_kv, head_dim, eps, theta, scratch, vals);
}
