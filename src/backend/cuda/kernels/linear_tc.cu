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

// Lane (g, t)'s first 16-byte weight load in rows o = tile + g and o + 8
// of each weight (clamped into m; loads past m are predicated off).
template <int W>
__device__ __forceinline__ void tc_rows(const uint4* (&w_lo)[W], const uint4* (&w_hi)[W], const bf16_t* w0, const bf16_t* w1, int o, int t, int k, int m) {
#pragma unroll
    for (int v = 0; v < W; v++) {
        const bf16_t* wv = v == 1 ? w1 : w0;
        w_lo[v] = (const uint4*)(wv + (size_t)min(o, m - 1) * k) + t;
        w_hi[v] = (const uint4*)(wv + (size_t)min(o + 8, m - 1) * k) + t;
    }
}

// Requests chunks c .. c + U - 1 of the warp's weight rows (g and g + 8 of
// its tile, per weight), zeros past c1 or where the row is outside m.
template <int W, int U>
__device__ __forceinline__ void tc_load(uint4 (&lo)[W][U], uint4 (&hi)[W][U], const uint4* const (&w_lo)[W], const uint4* const (&w_hi)[W], int c, int c1, bool ok_lo, bool ok_hi) {
#pragma unroll
    for (int v = 0; v < W; v++)
#pragma unroll
        for (int u = 0; u < U; u++) {
            lo[v][u] = ld_weight(w_lo[v] + (c + u) * 4, ok_lo && c + u < c1);
            hi[v][u] = ld_weight(w_hi[v] + (c + u) * 4, ok_hi && c + u < c1);
        }
}

// Stores a warp's finished sums: element i of batch tile j is weight row
// g + 8 * (i / 2) of the tile, activation row j * 8 + 2t + i % 2; rounded
// once (W = 2: gate and up rounded, then SwiGLU as swiglu_bf16), or left
// in f32 (RAW).
template <int NT, int W, bool RAW>
__device__ __forceinline__ void tc_store(const float (&acc)[W][NT][4], void* y, int o, int t, int m, int r0, int nr) {
#pragma unroll
    for (int j = 0; j < NT; j++)
#pragma unroll
        for (int i = 0; i < 4; i++) {
            int out = o + 8 * (i >> 1), col = j * 8 + 2 * t + (i & 1);
            if (out >= m || col >= nr) continue;
            float r = acc[0][j][i];
            if (RAW) {
                ((float*)y)[(size_t)(r0 + col) * m + out] = r;
                continue;
            }
            if (W == 2) {
                float gv = r16(acc[0][j][i]), uv = r16(acc[W - 1][j][i]);
                r = r16(gv / (1.0f + expf(-gv))) * uv;
            }
            ((bf16_t*)y)[(size_t)(r0 + col) * m + out] = f2bf(r);
        }
}

// NT batch tiles of 8 activation rows per block (grid.y walks groups of
// 8 * NT rows); block = 8 warps = 8 / parts weight tiles x parts shares.
// W weight matrices of one shape share every activation load: W = 1 for a
// product (y = x w^T), W = 2 for the MLP input (w0 = gate, w1 = up), whose
// outputs are rounded as the separate products would be and then combined
// as swiglu_bf16 does.
template <int NT, int U, int W, bool RAW = false>
__device__ __forceinline__ void gemm_tc_body(const bf16_t* x, const bf16_t* w0, const bf16_t* w1, void* y, int n, int k, int m, int parts) {
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
    tc_rows<W>(w_lo, w_hi, w0, w1, o, t, k, m);
    const uint4* xr[NT];
#pragma unroll
    for (int j = 0; j < NT; j++) xr[j] = (const uint4*)(x + (size_t)(r0 + min(j * 8 + g, nr - 1)) * k) + t;
    float acc[W][NT][4] = {};
    int c = c0;
    uint4 lo[W][U], hi[W][U];
    tc_load<W, U>(lo, hi, w_lo, w_hi, c, c1, live && ok_lo, live && ok_hi);
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
        tc_load<W, U>(lo, hi, w_lo, w_hi, c, c1, ok_lo, ok_hi);
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
    tc_store<NT, W, RAW>(acc, y, o, t, m, r0, nr);
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

// Products left unrounded in f32 (y is n x m floats): the projection of the
// fused attention-input path with tensor-core products, whose norm and
// RoPE take the f32 sums (qkv_finish_bf16 in qkv_fused.cu).
extern "C" __global__ void gemm_tc1_f32(const bf16_t* x, const bf16_t* w, float* y, int n, int k, int m, int parts) {
    gemm_tc_body<1, 8, 1, true>(x, w, w, y, n, k, m, parts);
}

extern "C" __global__ void gemm_tc2_f32(const bf16_t* x, const bf16_t* w, float* y, int n, int k, int m, int parts) {
    gemm_tc_body<2, 4, 1, true>(x, w, w, y, n, k, m, parts);
}

extern "C" __global__ void gemm_tc4_f32(const bf16_t* x, const bf16_t* w, float* y, int n, int k, int m, int parts) {
    gemm_tc_body<4, 2, 1, true>(x, w, w, y, n, k, m, parts);
}

extern "C" __global__ void gemm_tc8_f32(const bf16_t* x, const bf16_t* w, float* y, int n, int k, int m, int parts) {
    gemm_tc_body<8, 2, 1, true>(x, w, w, y, n, k, m, parts);
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

// ---------------------------------------------------------------------------
// Many-row products on Hopper (past 16 rows): the same bits as gemm_tc_body,
// with each activation chunk read from L2 once per block instead of once
// per warp. Past 16 rows the per-warp kernel reads more activation bytes
// than weight bytes (NT batch tiles of 16 bytes per lane against 32 of
// weights per chunk), and its activation traffic grows with the batch.
//
// A block's 8 warps own 8 consecutive 16-row weight tiles and the same
// share of the input chunks; they stage the share's activation rows in
// shared memory, S chunks at a time, double buffered with cp.async. The P
// shares of a tile group are the P blocks of one thread-block cluster;
// part 0 adds the other parts' sums from their shared memory in part
// order (distributed shared memory), as gemm_tc_body adds its warps'.
// Every output's sum is therefore the same sequence of f32 operations as
// there: the same chunk shares (P = tc_parts(m, k)), the same two MMAs per
// chunk in ascending chunk order, the parts added in order, one rounding.
// Staged rows past n are zero-filled and never written. S (chunks per
// stage, also the weight chunks a warp requests at once) changes no order.

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define TC_CLUSTER(p) __cluster_dims__(1, p, 1)
#define TC_HOPPER 1
#else
#define TC_CLUSTER(p)
#define TC_HOPPER 0
#endif

__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool ok) {
#if TC_HOPPER
    unsigned s = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(s), "l"(src), "r"(ok ? 16 : 0) : "memory");
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if TC_HOPPER
    asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}

template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if TC_HOPPER
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
#endif
}

template <int NT, int S, int W, int P, bool RAW = false>
__device__ __forceinline__ void gemm_tcs_body(const bf16_t* x, const bf16_t* w0, const bf16_t* w1, void* y, int n, int k, int m) {
#if TC_HOPPER
    constexpr int R = 8 * NT;
    constexpr int STAGE = S * R * 4;       // uint4 per stage
    constexpr int SUMS = 8 * NT * 4 * 32;  // floats: every warp's fragments of one weight
    constexpr int BYTES = (2 * STAGE * 16 > SUMS * 4) ? 2 * STAGE * 16 : SUMS * 4;
    __shared__ __align__(16) unsigned char smem[BYTES];
    uint4* stage = (uint4*)smem;
    float* sums = (float*)smem;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    int part = (int)cluster_rank();
    int base = (blockIdx.x * 8 + warp) * 16, o = base + g;
    int r0 = blockIdx.z * R, nr = min(R, n - r0);
    int chunks = k >> 5, share = (chunks + P - 1) / P;
    int c0 = part * share, c1 = min(chunks, c0 + share), nc = max(0, c1 - c0);
    int stages = (nc + S - 1) / S;
    bool live = base < m, ok_lo = o < m, ok_hi = o + 8 < m;
    const uint4* w_lo[W];
    const uint4* w_hi[W];
    tc_rows<W>(w_lo, w_hi, w0, w1, o, t, k, m);
    float acc[W][NT][4] = {};
    uint4 lo[W][S], hi[W][S];
    tc_load<W, S>(lo, hi, w_lo, w_hi, c0, c1, live && ok_lo, live && ok_hi);
    pdl_sync();
    // Stage `st` of the share into buffer st & 1: for each row, its S
    // chunks are contiguous in memory (t fastest, then the chunk).
    auto fill = [&](int st) {
        uint4* buf = stage + (st & 1) * STAGE;
        for (int idx = threadIdx.x; idx < STAGE; idx += 256) {
            int tt = idx & 3, s = (idx >> 2) % S, row = (idx >> 2) / S;
            int c = c0 + st * S + s;
            if (c >= c1) continue;
            const bf16_t* src = x + (size_t)(r0 + min(row, nr - 1)) * k + (size_t)c * 32 + tt * 8;
            cp_async16(buf + (s * R + row) * 4 + tt, src, row < nr);
        }
        cp_async_commit();
    };
    if (stages > 0) fill(0);
    for (int st = 0; st < stages; st++) {
        if (st + 1 < stages) {
            fill(st + 1);
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const uint4* buf = stage + (st & 1) * STAGE;
#pragma unroll
        for (int s = 0; s < S; s++)
            if (live && st * S + s < nc) {
#pragma unroll
                for (int j = 0; j < NT; j++)
                    if (j * 8 < nr) {
                        uint4 xv = buf[(s * R + j * 8 + g) * 4 + t];
#pragma unroll
                        for (int v = 0; v < W; v++) mma_chunk(acc[v][j], lo[v][s], hi[v][s], xv);
                    }
            }
        if (st + 1 < stages) tc_load<W, S>(lo, hi, w_lo, w_hi, c0 + (st + 1) * S, c1, live && ok_lo, live && ok_hi);
        __syncthreads();
    }
    // The parts meet as in gemm_tc_body: parts past the first leave each
    // fragment in their own shared memory (the staging buffers, free now),
    // part 0 reads them from there in part order, one weight at a time.
    if (P > 1) {
#pragma unroll
        for (int v = 0; v < W; v++) {
            if (part > 0)
#pragma unroll
                for (int j = 0; j < NT; j++)
#pragma unroll
                    for (int i = 0; i < 4; i++) sums[((warp * NT + j) * 4 + i) * 32 + lane] = acc[v][j][i];
            cluster_sync();
            if (part == 0 && live)
                for (int p = 1; p < P; p++)
#pragma unroll
                    for (int j = 0; j < NT; j++)
#pragma unroll
                        for (int i = 0; i < 4; i++) acc[v][j][i] += ld_cluster(&sums[((warp * NT + j) * 4 + i) * 32 + lane], p);
            cluster_sync();
        }
    }
    if (!live || part > 0) return;
    tc_store<NT, W, RAW>(acc, y, o, t, m, r0, nr);
#else
    __trap();
#endif
}

// Entry points: gemm_tcs{NT}_p{P} (products), gate_up_tcs{NT}_p{P} (the
// MLP input) and gemm_tcs{NT}_p{P}_f32 (unrounded products); NT = 4 (up
// to 32 rows per group) or 8; grid (m / 128 tile groups, P, row groups),
// clusters of (1, P, 1).
#define TCS_ENTRY(NT, S, P)                                                                                              \
    extern "C" __global__ void TC_CLUSTER(P) __launch_bounds__(256)                                                      \
        gemm_tcs##NT##_p##P##_bf16(const bf16_t* x, const bf16_t* w, bf16_t* y, int n, int k, int m) {                   \
        gemm_tcs_body<NT, S, 1, P>(x, w, w, y, n, k, m);                                                                 \
    }                                                                                                                    \
    extern "C" __global__ void TC_CLUSTER(P) __launch_bounds__(256)                                                      \
        gate_up_tcs##NT##_p##P##_bf16(const bf16_t* x, const bf16_t* wg, const bf16_t* wu, bf16_t* h, int n, int k, int m) { \
        gemm_tcs_body<NT, (S > 2 ? S / 2 : S), 2, P>(x, wg, wu, h, n, k, m);                                             \
    }                                                                                                                    \
    extern "C" __global__ void TC_CLUSTER(P) __launch_bounds__(256)                                                      \
        gemm_tcs##NT##_p##P##_f32(const bf16_t* x, const bf16_t* w, float* y, int n, int k, int m) {                     \
        gemm_tcs_body<NT, S, 1, P, true>(x, w, w, y, n, k, m);                                                           \
    }

TCS_ENTRY(4, 4, 1)
TCS_ENTRY(4, 4, 2)
TCS_ENTRY(4, 4, 4)
TCS_ENTRY(4, 4, 8)
TCS_ENTRY(8, 4, 1)
TCS_ENTRY(8, 4, 2)
TCS_ENTRY(8, 4, 4)
TCS_ENTRY(8, 4, 8)
