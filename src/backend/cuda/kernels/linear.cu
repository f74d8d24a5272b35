// Batch-1-to-8 matrix-vector products (decode), y[r, o] = sum_k x[r, k] w[o, k],
// f32 accumulation, one rounding. Requires k % 8 == 0 (16-byte loads).
// Block = 8 warps; `parts` warps (1, 2, 4 or 8) share one output row, each
// over interleaved 16-byte chunks; grid.y walks groups of ROWS_PER_PASS
// activation rows.

// `deterministic` mode: the parts' sums are added in warp order in shared
// memory. The order depends on (k, parts) only, never on timing or on how
// many activation rows there are.

extern "C" __global__ void gemv_bf16(const bf16_t* x, const bf16_t* w, bf16_t* y, int n, int k, int m, int parts) {
    gemv_body<ROWS_PER_PASS>(x, w, y, n, k, m, parts, blockIdx.y, blockIdx.x);
}

// Any number of activation rows with the arithmetic of gemv_bf16 (and so
// of gemv1_bf16: warp_dot walks a lane's chunks in the same order whatever
// the row count), for a batched decode step in deterministic mode: a row's
// bits do not depend on how many rows share the launch. MANY_NW weight rows
// per warp group share each activation load; a one-dimensional grid, row
// groups fastest, so the blocks that read the same weight rows run side by
// side and the weights come from DRAM about once.
#define MANY_NW 4
extern "C" __global__ void gemv_many_bf16(const bf16_t* x, const bf16_t* w, bf16_t* y, int n, int k, int m, int parts) {
    int groups = (n + ROWS_PER_PASS - 1) / ROWS_PER_PASS;
    gemv_body_rows<ROWS_PER_PASS, MANY_NW>(x, w, y, n, k, m, parts, blockIdx.x % groups, blockIdx.x / groups);
}

// One activation row (a decode step): fewer registers, more warps in flight.
extern "C" __global__ void gemv1_bf16(const bf16_t* x, const bf16_t* w, bf16_t* y, int n, int k, int m, int parts) {
    gemv_body<1>(x, w, y, n, k, m, parts, blockIdx.y, blockIdx.x);
}

extern "C" __global__ void gate_up_swiglu_bf16(const bf16_t* x, const bf16_t* wg, const bf16_t* wu, bf16_t* h, int k, int m, int parts) {
    gate_up_swiglu_row<false>(x, wg, wu, h, k, m, parts);
}

// `fast` mode: each part adds its sum into an f32 output with an atomic, in
// whatever order the warps finish (so results may differ run to run once
// three or more parts meet); f32_to_bf16_reset rounds afterwards and
// leaves y32 zeroed again for the next product.
extern "C" __global__ void gemv_atomic_bf16(const bf16_t* x, const bf16_t* w, float* y32, int n, int k, int m, int parts) {
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int rows_per_block = 8 / parts;
    int o = blockIdx.x * rows_per_block + warp / parts, part = warp % parts;
    int r0 = blockIdx.y * ROWS_PER_PASS, nr = min(ROWS_PER_PASS, n - r0);
    if (o >= m) {
        pdl_sync();
        return;
    }
    float acc[ROWS_PER_PASS];
    warp_dot_rows<ROWS_PER_PASS>(x + (size_t)r0 * k, w + (size_t)o * k, nr, k, part, parts, acc);
    if (lane < nr) {
        float mine = acc[0];
        for (int r = 1; r < ROWS_PER_PASS; r++) if (lane == r) mine = acc[r];
        atomicAdd(y32 + (size_t)(r0 + lane) * m + o, mine);
    }
}

// `fast` mode, one activation row (decode): the parts' sums of a row meet
// in shared memory through atomicAdd, in whatever order the warps arrive
// (so results may differ run to run once three or more parts meet; fast
// mode splits at least four ways), and one thread rounds. One launch and no
// global accumulator: the same loads and products as gemv1_bf16, so the two
// modes' speeds differ by the combination alone.
extern "C" __global__ void gemv1_fast_bf16(const bf16_t* x, const bf16_t* w, bf16_t* y, int n, int k, int m, int parts) {
    __shared__ float sums[8];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int rows_per_block = 8 / parts, slot = warp / parts;
    int o = blockIdx.x * rows_per_block + slot, part = warp % parts;
    if (threadIdx.x < 8) sums[threadIdx.x] = 0.0f;
    __syncthreads();
    float acc[1];
    if (o < m) warp_dot_rows<1>(x, w + (size_t)o * k, 1, k, part, parts, acc);
    pdl_sync();
    if (lane == 0 && o < m) atomicAdd(&sums[slot], acc[0]);
    __syncthreads();
    if (o < m && part == 0 && lane == 0) y[o] = f2bf(sums[slot]);
}

// `fast` mode's gate + up + SwiGLU pass: gate_up_swiglu_bf16 with the parts
// combined as in gemv1_fast_bf16.
extern "C" __global__ void gate_up_swiglu_fast_bf16(const bf16_t* x, const bf16_t* wg, const bf16_t* wu, bf16_t* h, int k, int m, int parts) {
    gate_up_swiglu_row<true>(x, wg, wu, h, k, m, parts);
}

extern "C" __global__ void f32_to_bf16_reset(float* a, bf16_t* out, size_t n) {
    pdl_sync();
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        out[i] = f2bf(a[i]);
        a[i] = 0.0f;
    }
}

// Any k: one warp per output column, lanes stride over k. Used when k is
// not a multiple of 8.
extern "C" __global__ void linear_bf16(const bf16_t* x, const bf16_t* w, bf16_t* y, int n, int k, int m) {
    pdl_sync();
    int warps = blockDim.x >> 5;
    int o = blockIdx.x * warps + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (o >= m) return;
    const bf16_t* wr = w + (size_t)o * k;
    for (int r = 0; r < n; r++) {
        const bf16_t* xr = x + (size_t)r * k;
        float acc = 0.0f;
        for (int i = lane; i < k; i += 32) acc += bf2f(xr[i]) * bf2f(wr[i]);
        acc = warp_sum(acc);
        if (lane == 0) y[(size_t)r * m + o] = f2bf(acc);
    }
}

// Greedy token of the last logits row: the largest value, ties to the
// lower index, NaN never wins (an exact choice, so any order gives the same
// answer). Each block of 1024 threads picks among a strided share of the
// row and leaves its pick in (part_v, part_i); the block that finishes last
// picks among those.
__device__ __forceinline__ void argmax_block(float* best_v, int* best_i, float bv, int bi) {
    best_v[threadIdx.x] = bv;
    best_i[threadIdx.x] = bi;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            float ov = best_v[threadIdx.x + s];
            int oi = best_i[threadIdx.x + s];
            if (ov > best_v[threadIdx.x] || (ov == best_v[threadIdx.x] && oi < best_i[threadIdx.x])) {
                best_v[threadIdx.x] = ov;
                best_i[threadIdx.x] = oi;
            }
        }
        __syncthreads();
    }
}

extern "C" __global__ void argmax_bf16(const bf16_t* logits, int n, float* part_v, int* part_i, unsigned int* counter, unsigned int* out) {
    __shared__ float best_v[1024];
    __shared__ int best_i[1024];
    pdl_sync();
    float bv = NEG_INF;
    int bi = 0x7fffffff;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        float v = bf2f(logits[i]);
        if (v > bv) { bv = v; bi = i; }
    }
    argmax_block(best_v, best_i, bv, bi);
    if (threadIdx.x == 0) {
        part_v[blockIdx.x] = best_v[0];
        part_i[blockIdx.x] = best_i[0];
    }
    if (!last_block_of(counter, gridDim.x)) return;
    bool mine = threadIdx.x < gridDim.x;
    argmax_block(best_v, best_i, mine ? __ldcg(&part_v[threadIdx.x]) : NEG_INF, mine ? __ldcg(&part_i[threadIdx.x]) : 0x7fffffff);
    if (threadIdx.x == 0) *out = best_i[0] == 0x7fffffff ? 0u : (unsigned int)best_i[0];
}

// The greedy token of every row of a batched step's logits: one block of
// 1024 threads per row, the same choice as argmax_bf16 (largest value, ties
// to the lower index, NaN never wins; an all-NaN row gives 0).
extern "C" __global__ void argmax_rows_bf16(const bf16_t* logits, int n, unsigned int* out) {
    __shared__ float best_v[1024];
    __shared__ int best_i[1024];
    pdl_sync();
    const bf16_t* row = logits + (size_t)blockIdx.x * n;
    float bv = NEG_INF;
    int bi = 0x7fffffff;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float v = bf2f(row[i]);
        if (v > bv) { bv = v; bi = i; }
    }
    argmax_block(best_v, best_i, bv, bi);
    if (threadIdx.x == 0) out[blockIdx.x] = best_i[0] == 0x7fffffff ? 0u : (unsigned int)best_i[0];
}
