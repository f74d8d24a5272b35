// Shared device helpers, prepended to every kernel file by the registry
// (src/backend/cuda/kernels.rs), so no include path is needed.
// bf16 values travel as their bit patterns (unsigned short): no CUDA headers.
typedef unsigned short bf16_t;
#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float bf2f(bf16_t b) { return __uint_as_float(((unsigned int)b) << 16); }

// Round to nearest, ties to even; NaN stays NaN.
__device__ __forceinline__ bf16_t f2bf(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16_t)((u >> 16) | 0x40u);
    unsigned int r = 0x7fffu + ((u >> 16) & 1u);
    return (bf16_t)((u + r) >> 16);
}

// Value rounded to bf16, kept as float.
__device__ __forceinline__ float r16(float f) { return bf2f(f2bf(f)); }

// Butterfly over a warp: the same order on every run.
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Block-wide sum in a fixed order (each warp's butterfly, then warp 0 over
// the warp sums); every thread gets the result. blockDim.x must be a
// multiple of 32, at most 1024. `scratch` holds 32 floats.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = (threadIdx.x < nw) ? scratch[threadIdx.x] : 0.0f;
    if (warp == 0) t = warp_sum(t);
    if (threadIdx.x == 0) scratch[0] = t;
    __syncthreads();
    float r = scratch[0];
    __syncthreads();
    return r;
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = (threadIdx.x < nw) ? scratch[threadIdx.x] : NEG_INF;
    if (warp == 0) t = warp_max(t);
    if (threadIdx.x == 0) scratch[0] = t;
    __syncthreads();
    float r = scratch[0];
    __syncthreads();
    return r;
}

// Products of 8 bf16 pairs packed in two 16-byte words, added to `acc` in
// element order. Element 2i of a word is its low half (little endian).
__device__ __forceinline__ float dot8(uint4 a, uint4 b, float acc) {
    unsigned int av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        acc += __uint_as_float(av[i] << 16) * __uint_as_float(bv[i] << 16);
        acc += __uint_as_float(av[i] & 0xffff0000u) * __uint_as_float(bv[i] & 0xffff0000u);
    }
    return acc;
}

// Rows of a dot-product batch handled by one pass over a weight row.
#define ROWS_PER_PASS 8

// Threads whose order the RMSNorm sum of squares follows (rms_norm.cu).
#define NORM_THREADS 128

// Programmatic dependent launch (Hopper and later; the backend launches
// with it where the device has it). A kernel may start while the previous
// one finishes; `pdl_sync` waits until that kernel has completed and its
// writes are visible, then lets the next kernel start in turn. Every kernel
// calls it in every thread before it reads anything an earlier kernel wrote
// and before it writes anything (so completion of a kernel implies
// completion of all earlier ones); only constant weights are read before
// it. Without the launch attribute both instructions do nothing.
__device__ __forceinline__ void pdl_sync() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Thread-block clusters (Hopper and later; nothing below, where no kernel
// that uses them is launched).
// Every thread of every block of the cluster arrives; shared-memory writes
// before it are visible to the cluster after it.
__device__ __forceinline__ void cluster_sync() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
#endif
}

__device__ __forceinline__ unsigned cluster_rank() {
    unsigned r = 0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
#endif
    return r;
}

// `p` (this block's shared memory) as it sits in block `rank` of the cluster.
__device__ __forceinline__ float ld_cluster(const float* p, unsigned rank) {
    float v = 0.0f;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    unsigned a = (unsigned)__cvta_generic_to_shared(p), r;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(rank));
    asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(r) : "memory");
#endif
    return v;
}

// 16-byte loads issued when `ok` (predicated, not branched around, so a
// run of them goes out before the first result is waited for); zeros
// otherwise. Weights stream past L1; activations use the read-only path.
__device__ __forceinline__ uint4 ld_weight(const uint4* p, bool ok) {
    uint4 v = {0u, 0u, 0u, 0u};
    asm volatile("{\n .reg .pred q;\n setp.ne.b32 q, %4, 0;\n @q ld.global.cs.v4.u32 {%0, %1, %2, %3}, [%5];\n}"
                 : "+r"(v.x), "+r"(v.y), "+r"(v.z), "+r"(v.w) : "r"((int)ok), "l"(p));
    return v;
}

__device__ __forceinline__ uint4 ld_act(const uint4* p, bool ok) {
    uint4 v = {0u, 0u, 0u, 0u};
    asm volatile("{\n .reg .pred q;\n setp.ne.b32 q, %4, 0;\n @q ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%5];\n}"
                 : "+r"(v.x), "+r"(v.y), "+r"(v.z), "+r"(v.w) : "r"((int)ok), "l"(p));
    return v;
}

// Partial dot products of NW weight rows w[i] (k / 8 chunks of 16 bytes
// each) with up to R activation rows (R = 1 for decode, ROWS_PER_PASS for
// small batches: the same order either way, so a row's sums do not depend
// on how many rows share the pass): this warp takes chunks part * 32 +
// lane, then every 32 * parts, added in that order; then the butterfly. A
// fixed summation order for a given (k, parts). Every lane returns the
// warp's sums in acc[i][0..n).
//
// Loads go out U chunks at a time, all of a group before any product, so a
// lane waits for memory once per group rather than once per chunk (U = 4
// for decode: deeper groups cost registers, and so blocks per SM, which
// small products need more). The
// first group's weights are requested before pdl_sync: they never depend
// on the previous kernel, so their latency overlaps its tail.
template <int R, int NW>
__device__ __forceinline__ void warp_dot(const bf16_t* x, const bf16_t* const (&w)[NW], int n, int k, int part, int parts, float (&acc)[NW][R]) {
    constexpr int U = R == 1 ? 4 : 2;
    int lane = threadIdx.x & 31, chunks = k >> 3, step = 32 * parts;
#pragma unroll
    for (int i = 0; i < NW; i++)
#pragma unroll
        for (int r = 0; r < R; r++) acc[i][r] = 0.0f;
    int c = part * 32 + lane;
    uint4 wv[NW][U];
#pragma unroll
    for (int i = 0; i < NW; i++)
#pragma unroll
        for (int u = 0; u < U; u++) wv[i][u] = ld_weight((const uint4*)w[i] + c + u * step, c + u * step < chunks);
    pdl_sync();
    while (true) {
        uint4 xv[R][U];
#pragma unroll
        for (int r = 0; r < R; r++)
#pragma unroll
            for (int u = 0; u < U; u++)
                xv[r][u] = ld_act((const uint4*)(x + (size_t)r * k) + c + u * step, c + u * step < chunks && (R == 1 || r < n));
#pragma unroll
        for (int u = 0; u < U; u++)
            if (c + u * step < chunks) {
#pragma unroll
                for (int i = 0; i < NW; i++)
#pragma unroll
                    for (int r = 0; r < R; r++)
                        if (R == 1 || r < n) acc[i][r] = dot8(xv[r][u], wv[i][u], acc[i][r]);
            }
        c += U * step;
        if (c >= chunks) break;
#pragma unroll
        for (int i = 0; i < NW; i++)
#pragma unroll
            for (int u = 0; u < U; u++) wv[i][u] = ld_weight((const uint4*)w[i] + c + u * step, c + u * step < chunks);
    }
#pragma unroll
    for (int i = 0; i < NW; i++)
#pragma unroll
        for (int r = 0; r < R; r++) acc[i][r] = warp_sum(acc[i][r]);
}

// One weight row: acc[0..n) as warp_dot's.
template <int R>
__device__ __forceinline__ void warp_dot_rows(const bf16_t* x, const bf16_t* wr, int n, int k, int part, int parts, float* acc) {
    const bf16_t* w[1] = {wr};
    float a[1][R];
    warp_dot<R, 1>(x, w, n, k, part, parts, a);
#pragma unroll
    for (int r = 0; r < R; r++) acc[r] = a[0][r];
}

// Signals that this block has finished its share of `counter`'s work item;
// true in every thread of the one block that finished it last (which resets
// the counter for the next launch). Results written before the call are
// visible to that block through __ldcg. The counter only orders blocks: no
// value is ever summed with an atomic, so results stay bitwise fixed.
__device__ __forceinline__ bool last_block_of(unsigned int* counter, unsigned int blocks) {
    __shared__ bool last;
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        unsigned int done = atomicAdd(counter, 1u);
        last = (done == blocks - 1);
        if (last) *counter = 0u;
    }
    __syncthreads();
    return last;
}

// SwiGLU MLP input in one pass for one activation row: warp group o computes
// the gate and up rows o, rounds each (as the separate products would), and
// writes h[o] = bf16(bf16(silu(gate)) * up). Same sums as gemv1_bf16 on
// each row. Shared by the dense MLP and the MoE experts. ATOMIC (fast mode
// only): a row's parts meet in shared memory through atomicAdd in arrival
// order instead of in warp order.
template <bool ATOMIC>
__device__ __forceinline__ void gate_up_swiglu_row(const bf16_t* x, const bf16_t* wg, const bf16_t* wu, bf16_t* h, int k, int m, int parts) {
    __shared__ float partial[2][8];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int rows_per_block = 8 / parts, slot = warp / parts;
    int o = blockIdx.x * rows_per_block + slot, part = warp % parts;
    if (ATOMIC) {
        if (threadIdx.x < 16) partial[threadIdx.x >> 3][threadIdx.x & 7] = 0.0f;
        __syncthreads();
    }
    float gu[2][1];
    if (o < m) {
        const bf16_t* w[2] = {wg + (size_t)o * k, wu + (size_t)o * k};
        warp_dot<1, 2>(x, w, 1, k, part, parts, gu);
    }
    pdl_sync();
    if (lane == 0 && o < m) {
        if (ATOMIC) {
            atomicAdd(&partial[0][slot], gu[0][0]);
            atomicAdd(&partial[1][slot], gu[1][0]);
        } else {
            partial[0][warp] = gu[0][0];
            partial[1][warp] = gu[1][0];
        }
    }
    __syncthreads();
    if (o < m && part == 0 && lane == 0) {
        float tg = 0.0f, tu = 0.0f;
        if (ATOMIC) {
            tg = partial[0][slot];
            tu = partial[1][slot];
        } else {
            for (int p = 0; p < parts; p++) {
                tg += partial[0][warp + p];
                tu += partial[1][warp + p];
            }
        }
        float gv = r16(tg), uv = r16(tu);
        h[o] = f2bf(r16(gv / (1.0f + expf(-gv))) * uv);
    }
}

// gemv_body with NW weight rows per warp group (a batched decode step):
// warp_dot walks each weight row's chunks in the order it does for one row,
// so every output has gemv_body's bits, while the activations a lane loads
// serve NW rows instead of one. Rows past m are loaded from row m - 1 and
// never written.
template <int R, int NW>
__device__ __forceinline__ void gemv_body_rows(const bf16_t* x, const bf16_t* w, bf16_t* y, int n, int k, int m, int parts, int group, int wblock) {
    __shared__ float partial[8][NW][R];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int o0 = wblock * (NW * 8 / parts) + (warp / parts) * NW, part = warp % parts;
    int r0 = group * R, nr = min(R, n - r0);
    const bf16_t* wr[NW];
#pragma unroll
    for (int i = 0; i < NW; i++) wr[i] = w + (size_t)min(o0 + i, m - 1) * k;
    float acc[NW][R];
    if (o0 < m) warp_dot<R, NW>(x + (size_t)r0 * k, wr, nr, k, part, parts, acc);
    pdl_sync();
    if (lane == 0 && o0 < m)
#pragma unroll
        for (int i = 0; i < NW; i++)
#pragma unroll
            for (int r = 0; r < R; r++) partial[warp][i][r] = acc[i][r];
    __syncthreads();
    if (o0 < m && part == 0 && lane < nr) {
        for (int i = 0; i < NW && o0 + i < m; i++) {
            float t = 0.0f;
            for (int p = 0; p < parts; p++) t += partial[warp + p][i][lane];
            y[(size_t)(r0 + lane) * m + o0 + i] = f2bf(t);
        }
    }
}

// y[r, o] = bf16(sum_k x[r, k] w[o, k]) for the R-row group `group`:
// `parts` warps per output row, their sums added in warp order. The body of
// gemv_bf16 / gemv1_bf16, and of the MoE down products.
template <int R>
__device__ __forceinline__ void gemv_body(const bf16_t* x, const bf16_t* w, bf16_t* y, int n, int k, int m, int parts, int group, int wblock) {
    __shared__ float partial[8][R];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int rows_per_block = 8 / parts;
    int o = wblock * rows_per_block + warp / parts, part = warp % parts;
    int r0 = group * R, nr = min(R, n - r0);
    float acc[R];
    if (o < m) warp_dot_rows<R>(x + (size_t)r0 * k, w + (size_t)o * k, nr, k, part, parts, acc);
    pdl_sync();
    if (lane == 0 && o < m)
        for (int r = 0; r < R; r++) partial[warp][r] = acc[r];
    __syncthreads();
    if (o < m && part == 0 && lane < nr) {
        float t = 0.0f;
        for (int p = 0; p < parts; p++) t += partial[warp + p][lane];
        y[(size_t)(r0 + lane) * m + o] = f2bf(t);
    }
}
