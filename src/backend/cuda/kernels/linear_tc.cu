// Tensor-core products y[r, o] = bf16(sum_k x[r, k] w[o, k]) for any number
// of activation rows, batch invariant: a row's bits depend on its own
// inputs and the shape (k, m, parts), never on how many rows share the
// launch or where the row sits among them. Deterministic mode with
// tensor-core products only (CudaOptions::products); requires k % 32 == 0.
//
// Each warp owns a tile of 16 weight rows and one of `parts` contiguous
// shares of the k / 32 input chunks; it walks its chunks in ascending order
// for every batch tile of 8 activation rows, and each chunk is two
// m16n8k16 MMAs accumulating in f32 (weights as A, activations as B). An
// output element's MMAs read only its own weight row and activation row, so
// padding rows and companions never enter its sum. The parts meet in warp
// order (part 0's registers, then each later part's from shared memory)
// and are rounded once, as in gemv_bf16. How many chunks a warp requests
// before its first product (U) and how many batch tiles a block takes (NT)
// change no order.
//
// Inputs are permuted within a chunk so that every lane makes 16-byte
// loads: lane (g = lane / 4, t = lane % 4) reads inputs 8t..8t+7 of weight
// rows g and g + 8 and of activation row g, and gives the first four to one
// MMA and the last four to the other. The MMA's own fragment order
// (inputs 2t, 2t+1, 2t+8, 2t+9 in each lane) then covers every input of the
// chunk once; weights and activations share the permutation, so each
// product pairs the right two values.

__device__ __forceinline__ void mma_bf16(float (&d)[4], unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0, unsigned b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#else
    __trap();
#endif
}

// One chunk of 32 inputs: `lo` and `hi` are the lane's 8 inputs of weight
// rows g and g + 8, `xv` those of activation row g.
__device__ __forceinline__ void mma_chunk(float (&d)[4], uint4 lo, uint4 hi, uint4 xv) {
    mma_bf16(d, lo.x, hi.x, lo.y, hi.y, xv.x, xv.y);
    mma_bf16(d, lo.z, hi.z, lo.w, hi.w, xv.z, xv.w);
}

// NT batch tiles of 8 activation rows per block (grid.y walks groups of
// 8 * NT rows); block = 8 warps = 8 / parts weight tiles x parts shares.
// W weight matrices of one shape share every activation load: W = 1 for a
// product (y = x w^T), W = 2 for the MLP input (w0 = gate, w1 = up), whose
// outputs are rounded as the separate products would be and then combined
// as swiglu_bf16 does.
template <int NT, int U, int W>
__device__ __forceinline__ void gemm_tc_body(const bf16_t* x, const bf16_t* w0, const bf16_t* w1, bf16_t* y, int n, int k, int m, int parts) {
    __shared__ float sums[7][16 * 8 * NT];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    int slot = warp / parts, part = warp % parts;
    int base = (blockIdx.x * (8 / parts) + slot) * 16, o = base + g;
    int r0 = blockIdx.y * 8 * NT, nr = min(8 * NT, n - r0);
    int chunks = k >> 5, share = (chunks + parts - 1) / parts;
    int c0 = part * share, c1 = min(chunks, c0 + share);
    bool live = base < m, ok_lo = o < m, ok_hi = o + 8 < m;
    const uint4* w_lo[W];
    const uint4* w_hi[W];
#pragma unroll
    for (int v = 0; v < W; v++) {
        const bf16_t* wv = v == 1 ? w1 : w0;
        w_lo[v] = (const uint4*)(wv + (size_t)min(o, m - 1) * k) + t;
        w_hi[v] = (const uint4*)(wv + (size_t)min(o + 8, m - 1) * k) + t;
    }
    const uint4* xr[NT];
#pragma unroll
    for (int j = 0; j < NT; j++) xr[j] = (const uint4*)(x + (size_t)(r0 + min(j * 8 + g, nr - 1)) * k) + t;
    float acc[W][NT][4];
#pragma unroll
    for (int v = 0; v < W; v++)
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int i = 0; i < 4; i++) acc[v][j][i] = 0.0f;
    int c = c0;
    uint4 lo[W][U], hi[W][U];
#pragma unroll
    for (int v = 0; v < W; v++)
#pragma unroll
        for (int u = 0; u < U; u++) {
            lo[v][u] = ld_weight(w_lo[v] + (c + u) * 4, live && ok_lo && c + u < c1);
            hi[v][u] = ld_weight(w_hi[v] + (c + u) * 4, live && ok_hi && c + u < c1);
        }
    pdl_sync();
    while (live && c < c1) {
        uint4 xv[U][NT];
#pragma unroll
        for (int u = 0; u < U; u++)
#pragma unroll
            for (int j = 0; j < NT; j++) xv[u][j] = ld_act(xr[j] + (c + u) * 4, c + u < c1 && j * 8 + g < nr);
#pragma unroll
        for (int u = 0; u < U; u++)
            if (c + u < c1) {
#pragma unroll
                for (int j = 0; j < NT; j++)
#pragma unroll
                    for (int v = 0; v < W; v++)
                        if (j * 8 < nr) mma_chunk(acc[v][j], lo[v][u], hi[v][u], xv[u][j]);
            }
        c += U;
        if (c >= c1) break;
#pragma unroll
        for (int v = 0; v < W; v++)
#pragma unroll
            for (int u = 0; u < U; u++) {
                lo[v][u] = ld_weight(w_lo[v] + (c + u) * 4, ok_lo && c + u < c1);
                hi[v][u] = ld_weight(w_hi[v] + (c + u) * 4, ok_hi && c + u < c1);
            }
    }
    // Every warp's accumulators have the same layout: element i of batch
    // tile j is weight row g + 8 * (i / 2) of the tile, activation row
    // j * 8 + 2t + i % 2. Parts past the first leave theirs in shared memory (lane
    // fastest), one fragment at a time; part 0 adds them in part order.
    int later = slot * (parts - 1) + part - 1;
#pragma unroll
    for (int v = 0; v < W; v++) {
        if (live && part > 0)
#pragma unroll
            for (int j = 0; j < NT; j++)
#pragma unroll
                for (int i = 0; i < 4; i++) sums[later][(j * 4 + i) * 32 + lane] = acc[v][j][i];
        __syncthreads();
        if (live && part == 0)
            for (int p = 1; p < parts; p++)
#pragma unroll
                for (int j = 0; j < NT; j++)
#pragma unroll
                    for (int i = 0; i < 4; i++) acc[v][j][i] += sums[slot * (parts - 1) + p - 1][(j * 4 + i) * 32 + lane];
        __syncthreads();
    }
    if (!live || part > 0) return;
#pragma unroll
    for (int j = 0; j < NT; j++)
#pragma unroll
        for (int i = 0; i < 4; i++) {
            int out = o + 8 * (i >> 1), col = j * 8 + 2 * t + (i & 1);
            if (out >= m || col >= nr) continue;
            float r = acc[0][j][i];
            if (W == 2) {
                float gv = r16(acc[0][j][i]), uv = r16(acc[W - 1][j][i]);
                r = r16(gv / (1.0f + expf(-gv))) * uv;
            }
            y[(size_t)(r0 + col) * m + out] = f2bf(r);
        }
}

// Products, NT batch tiles per block (1, 2, 4 or 8): the fewer rows, the
// more chunks in flight per warp. (Two 16-row tiles per warp past 32 rows,
// so each activation load serves twice the MMAs, measured slower on an
// H200: qwen3-8b batch 64 2277 tok/s, against 3030 for one tile in another
// call; docs/benchmark_results/batched-decode-nvidia-h200.md.)
extern "C" __global__ void gemm_tc1_bf16(const bf16_t* x, const bf16_t* w, bf16_t* y, int n, int k, int m, int parts) {
    gemm_tc_body<1, 8, 1>(x, w, w, y, n, k, m, parts);
}

extern "C" __global__ void gemm_tc2_bf16(const bf16_t* x, const bf16_t* w, bf16_t* y, int n, int k, int m, int parts) {
    gemm_tc_body<2, 4, 1>(x, w, w, y, n, k, m, parts);
}

extern "C" __global__ void gemm_tc4_bf16(const bf16_t* x, const bf16_t* w, bf16_t* y, int n, int k, int m, int parts) {
    gemm_tc_body<4, 2, 1>(x, w, w, y, n, k, m, parts);
}

extern "C" __global__ void gemm_tc8_bf16(const bf16_t* x, const bf16_t* w, bf16_t* y, int n, int k, int m, int parts) {
    gemm_tc_body<8, 2, 1>(x, w, w, y, n, k, m, parts);
}

// The MLP input h = bf16(bf16(silu(gate)) * up) of the gate and up
// products, NT batch tiles per block (1, 2 or 4; past 32 rows grid.y walks
// groups of 32: eight tiles of two weights measured slower, as above).
extern "C" __global__ void gate_up_tc1_bf16(const bf16_t* x, const bf16_t* wg, const bf16_t* wu, bf16_t* h, int n, int k, int m, int parts) {
    gemm_tc_body<1, 4, 2>(x, wg, wu, h, n, k, m, parts);
}

extern "C" __global__ void gate_up_tc2_bf16(const bf16_t* x, const bf16_t* wg, const bf16_t* wu, bf16_t* h, int n, int k, int m, int parts) {
    gemm_tc_body<2, 2, 2>(x, wg, wu, h, n, k, m, parts);
}

extern "C" __global__ void gate_up_tc4_bf16(const bf16_t* x, const bf16_t* wg, const bf16_t* wu, bf16_t* h, int n, int k, int m, int parts) {
    gemm_tc_body<4, 2, 2>(x, wg, wu, h, n, k, m, parts);
}
