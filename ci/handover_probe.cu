// What does handing a decode step from one dependent stage to the next cost
// on this GPU, and how much of qwen3-0.6b's batch-1 step would a persistent
// kernel win back? Issue 19's decision between "fewer launches" and "a
// persistent kernel with grid barriers" rests on this, and Nsight Compute,
// which times kernels one at a time, cannot show it.
//
// The model: one decode token of a qwen3-0.6b-shaped chain, 28 layers of
// [norm 1x1024, qkv 4096x1024, attention 16x8192, o 1024x2048, norm 1x1024,
// gate+up 6144x1024, down 1024x3072], then a final norm and the 151936x1024
// head: 198 stages, 1.19 GB of bf16 weights, each stage's input the output
// of the one before (a true dependence). Every stage is the same one-row
// product: one warp per weight row, 16-byte loads, 4 per lane in flight, the
// first group requested before the stage waits for its input (weights never
// depend on the stage before). The arithmetic is ours, not the engine's: the
// question is the handover, not the kernels.
//
// Variants, each timed over the same tokens:
//   graph-pdl       one launch per stage in a CUDA graph, programmatic
//                   dependent launch (griddepcontrol), as the engine runs
//   graph           the same without PDL
//   persistent-bN   one cooperative launch per token, N blocks per SM,
//                   stages separated by a grid barrier (one counter, a
//                   generation flag), next stage's first weights requested
//                   before the barrier
//   nobarrier-bN    the same kernel with the barriers left out: the bytes
//                   alone (wrong results, a floor, not a design)
//   staged-Kk-bN    graph-pdl with each block's weights copied (cp.async)
//                   into K KiB of shared memory before the PDL wait, N
//                   blocks per SM, so the next stage's bytes stream in while
//                   the stage before runs
//   empty-graph-pdl / barrier-bN: 198 handovers with no work, per handover
// Run by `ci/device-cuda.sh handover-probe` (nvcc -arch=sm_90).
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <vector>
#include <cuda_runtime.h>
#include <cuda_bf16.h>

#define CHECK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { \
  fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e)); exit(1); } } while (0)

struct Stage {
  const uint4* w;   // m x k bf16, k % 8 == 0
  const uint4* x;   // k bf16
  __nv_bfloat16* y; // m bf16
  int m, k;
  int idx;          // the stage's place in the chain (timeline stamps)
};

// The timeline: per stage, the first block's start, the first block past
// its wait, the last block past its wait and the last block's end
// (%globaltimer, ns). Null except in the timeline runs.
__device__ unsigned long long* g_stamps;
__device__ __forceinline__ unsigned long long gtime() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
__device__ __forceinline__ void stamp(int idx, int slot) {
  unsigned long long* p = g_stamps;
  if (p && threadIdx.x == 0) {
    unsigned long long t = gtime();
    if (slot == 0 || slot == 1) atomicMin(p + idx * 4 + slot, t);
    else atomicMax(p + idx * 4 + slot, t);
  }
}

__device__ __forceinline__ float dot8(uint4 a, uint4 b, float acc) {
  const __nv_bfloat162* p = reinterpret_cast<const __nv_bfloat162*>(&a);
  const __nv_bfloat162* q = reinterpret_cast<const __nv_bfloat162*>(&b);
#pragma unroll
  for (int i = 0; i < 4; i++) {
    float2 u = __bfloat1622float2(p[i]), v = __bfloat1622float2(q[i]);
    acc = fmaf(u.x, v.x, acc);
    acc = fmaf(u.y, v.y, acc);
  }
  return acc;
}

__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.cs.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}

#define U 4

// The first group of a row's weights (chunks lane, lane + 32, ...).
__device__ __forceinline__ void row_first(const Stage& s, int row, uint4 (&wv)[U]) {
  int chunks = s.k >> 3, lane = threadIdx.x & 31;
  const uint4* w = s.w + (size_t)row * chunks;
#pragma unroll
  for (int u = 0; u < U; u++) {
    int c = lane + 32 * u;
    wv[u] = c < chunks ? ld_stream(w + c) : make_uint4(0, 0, 0, 0);
  }
}

// The rest of the row, then y[row].
__device__ __forceinline__ void row_rest(const Stage& s, int row, uint4 (&wv)[U]) {
  int chunks = s.k >> 3, lane = threadIdx.x & 31;
  const uint4* w = s.w + (size_t)row * chunks;
  float acc = 0.0f;
  for (int c0 = 0; c0 < chunks; c0 += 32 * U) {
    uint4 xv[U];
#pragma unroll
    for (int u = 0; u < U; u++) {
      int c = c0 + lane + 32 * u;
      xv[u] = c < chunks ? __ldcg(s.x + c) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < U; u++) acc = dot8(xv[u], wv[u], acc);
    int n0 = c0 + 32 * U;
    if (n0 < chunks) {
#pragma unroll
      for (int u = 0; u < U; u++) {
        int c = n0 + lane + 32 * u;
        wv[u] = c < chunks ? ld_stream(w + c) : make_uint4(0, 0, 0, 0);
      }
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  // sin keeps every stage's outputs in [-1, 1] and sensitive to each input
  if (lane == 0) s.y[row] = __float2bfloat16(__sinf(acc));
}

__device__ __forceinline__ void pdl_wait() {
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
}

// One stage, one row per warp (8 warps a block).
__global__ void __launch_bounds__(256) stage_kernel(Stage s) {
  stamp(s.idx, 0);
  int row = blockIdx.x * 8 + (threadIdx.x >> 5);
  uint4 wv[U];
  if (row < s.m) row_first(s, row, wv);
  pdl_wait();
  stamp(s.idx, 1);
  stamp(s.idx, 2);
  if (row < s.m) row_rest(s, row, wv);
  if (g_stamps) __syncthreads();
  stamp(s.idx, 3);
}

// One stage with its weights staged in shared memory: a block of 8 warps
// takes tiles of 8 rows (tile t of block b: rows (b + t G) * 8 + warp),
// holding SLOTS tiles at a time. Every lane copies (cp.async) exactly the
// chunks it will multiply, so no block barrier is needed; the first SLOTS
// tiles are requested before the PDL wait, so with one block per SM a stage's
// whole weight slice (when it fits) streams in while the stage before runs.
// Same per-row order as stage_kernel: chunks lane, lane + 32, ... in turn.
#define KC_MAX 12
__device__ __forceinline__ void cp16(void* smem, const void* gmem) {
  unsigned a = (unsigned)__cvta_generic_to_shared(smem);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" :: "r"(a), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;" :: "n"(N) : "memory"); }

template <int SLOTS>
__global__ void __launch_bounds__(256) staged_kernel(Stage s) {
  extern __shared__ uint4 slots[];  // SLOTS x 8 rows x chunks
  stamp(s.idx, 0);
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
  int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, chunks = s.k >> 3, kc = chunks >> 5;
  int tiles = (s.m + 7) >> 3, G = gridDim.x;
  int mine = (tiles - (int)blockIdx.x + G - 1) / G;  // tiles of this block
  auto row_of = [&](int t) { return ((int)blockIdx.x + t * G) * 8 + warp; };
  auto request = [&](int t) {
    if (t < mine) {
      int row = row_of(t);
      if (row < s.m) {
        uint4* dst = slots + ((size_t)(t % SLOTS) * 8 + warp) * chunks;
        const uint4* src = s.w + (size_t)row * chunks;
        for (int u = 0; u < kc; u++) cp16(dst + lane + 32 * u, src + lane + 32 * u);
      }
    }
    cp_commit();
  };
#pragma unroll
  for (int t = 0; t < SLOTS; t++) request(t);
  asm volatile("griddepcontrol.wait;" ::: "memory");
  stamp(s.idx, 1);
  stamp(s.idx, 2);
  uint4 xv[KC_MAX];
#pragma unroll
  for (int u = 0; u < KC_MAX; u++) xv[u] = u < kc ? __ldcg(s.x + lane + 32 * u) : make_uint4(0, 0, 0, 0);
  for (int t = 0; t < mine; t++) {
    cp_wait<SLOTS - 1>();
    int row = row_of(t);
    if (row < s.m) {
      const uint4* w = slots + ((size_t)(t % SLOTS) * 8 + warp) * chunks;
      float acc = 0.0f;
#pragma unroll
      for (int u = 0; u < KC_MAX; u++)
        if (u < kc) acc = dot8(xv[u], w[lane + 32 * u], acc);
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
      if (lane == 0) s.y[row] = __float2bfloat16(__sinf(acc));
    }
    __syncwarp();
    request(t + SLOTS);
  }
  cp_wait<0>();
  if (g_stamps) __syncthreads();
  stamp(s.idx, 3);
}

__global__ void __launch_bounds__(256) empty_kernel(int* sink) {
  pdl_wait();
  if (threadIdx.x == 0 && blockIdx.x == 0 && sink[0] == 12345) sink[1] = 1;
}

// All blocks of the grid meet; every write before it is visible after it.
__device__ __forceinline__ void grid_barrier(unsigned* count, volatile unsigned* gen, unsigned blocks) {
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned g = *gen;
    __threadfence();
    if (atomicAdd(count, 1u) == blocks - 1) {
      *count = 0u;
      __threadfence();
      atomicAdd((unsigned*)gen, 1u);
    } else {
      while (*gen == g) {}
    }
    __threadfence();
  }
  __syncthreads();
}

// One token: every stage in turn, warps of the whole grid taking rows
// (warp w: rows w, w + W, ...), a barrier between stages unless BARRIER is
// false. The next stage's first weights go out before the barrier.
template <bool BARRIER>
__global__ void __launch_bounds__(256) persistent_kernel(const Stage* stages, int n, unsigned* count, unsigned* gen) {
  int warps = gridDim.x * 8, warp = blockIdx.x * 8 + (threadIdx.x >> 5);
  for (int i = 0; i < n; i++) {
    Stage s = stages[i];
    uint4 wv[U];
    if (warp < s.m) row_first(s, warp, wv);
    if (BARRIER && i > 0) grid_barrier(count, gen, gridDim.x);
    for (int row = warp; row < s.m; row += warps) {
      if (row != warp) row_first(s, row, wv);
      row_rest(s, row, wv);
    }
  }
}

__global__ void __launch_bounds__(256) barrier_kernel(int n, unsigned* count, unsigned* gen) {
  for (int i = 0; i < n; i++) grid_barrier(count, gen, gridDim.x);
}

__global__ void fill(uint4* p, size_t n, unsigned seed) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    unsigned h = (unsigned)i * 2654435761u ^ seed;
    // bf16 values around 2^-6 with mixed signs
    unsigned v = 0x3c803c80u ^ (h & 0x007f007fu);
    p[i] = make_uint4(v, v ^ 0x00010001u, v ^ 0x80008000u, v ^ 0x00020002u);
  }
}

static float time_ms(cudaStream_t st, int reps, void (*fn)(cudaStream_t, void*), void* ctx) {
  cudaEvent_t a, b;
  CHECK(cudaEventCreate(&a));
  CHECK(cudaEventCreate(&b));
  for (int i = 0; i < 5; i++) fn(st, ctx);
  CHECK(cudaStreamSynchronize(st));
  float best = 1e30f;
  for (int trial = 0; trial < 3; trial++) {
    CHECK(cudaEventRecord(a, st));
    for (int i = 0; i < reps; i++) fn(st, ctx);
    CHECK(cudaEventRecord(b, st));
    CHECK(cudaEventSynchronize(b));
    float ms;
    CHECK(cudaEventElapsedTime(&ms, a, b));
    if (ms / reps < best) best = ms / reps;
  }
  return best;
}

struct Ctx {
  cudaGraphExec_t graph;
  const Stage* dstages;
  int n, blocks;
  unsigned *count, *gen;
  bool barrier;
};

static void run_graph(cudaStream_t st, void* p) { CHECK(cudaGraphLaunch(((Ctx*)p)->graph, st)); }

static void run_persistent(cudaStream_t st, void* p) {
  Ctx* c = (Ctx*)p;
  void* args[] = {(void*)&c->dstages, (void*)&c->n, (void*)&c->count, (void*)&c->gen};
  if (c->barrier)
    CHECK(cudaLaunchCooperativeKernel((void*)persistent_kernel<true>, c->blocks, 256, args, 0, st));
  else
    CHECK(cudaLaunchCooperativeKernel((void*)persistent_kernel<false>, c->blocks, 256, args, 0, st));
}

static void run_barriers(cudaStream_t st, void* p) {
  Ctx* c = (Ctx*)p;
  void* args[] = {(void*)&c->n, (void*)&c->count, (void*)&c->gen};
  CHECK(cudaLaunchCooperativeKernel((void*)barrier_kernel, c->blocks, 256, args, 0, st));
}

int main() {
  int dev = 0, sms = 0;
  CHECK(cudaSetDevice(dev));
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, dev));
  sms = prop.multiProcessorCount;
  printf("device: %s, %d SMs, L2 %d MB\n", prop.name, sms, prop.l2CacheSize >> 20);

  // The stage list.
  std::vector<int> ms, ks;
  auto add = [&](int m, int k) { ms.push_back(m); ks.push_back(k); };
  for (int l = 0; l < 28; l++) {
    add(1, 1024); add(4096, 1024); add(16, 8192); add(1024, 2048);
    add(1, 1024); add(6144, 1024); add(1024, 3072);
  }
  add(1, 1024);
  add(151936, 1024);
  int n = (int)ms.size();
  size_t bytes = 0;
  std::vector<Stage> stages(n);
  // Activation buffers: stage i reads act[i], writes act[i + 1]; each is
  // as long as the longest k or m.
  size_t act_len = 151936;
  __nv_bfloat16* act;
  CHECK(cudaMalloc(&act, (n + 1) * act_len * 2));
  CHECK(cudaMemset(act, 0, (n + 1) * act_len * 2));
  fill<<<1024, 256>>>((uint4*)act, (n + 1) * act_len * 2 / 16, 7u);
  for (int i = 0; i < n; i++) {
    size_t len = (size_t)ms[i] * ks[i];
    uint4* w;
    CHECK(cudaMalloc(&w, len * 2));
    fill<<<1024, 256>>>(w, len / 8, 1000u + i);
    bytes += len * 2;
    stages[i] = {w, (const uint4*)(act + i * act_len), act + (i + 1) * act_len, ms[i], ks[i], i};
  }
  CHECK(cudaDeviceSynchronize());
  Stage* dstages;
  CHECK(cudaMalloc(&dstages, n * sizeof(Stage)));
  CHECK(cudaMemcpy(dstages, stages.data(), n * sizeof(Stage), cudaMemcpyHostToDevice));
  unsigned* sync;
  CHECK(cudaMalloc(&sync, 64));
  CHECK(cudaMemset(sync, 0, 64));
  int* sink;
  CHECK(cudaMalloc(&sink, 64));
  CHECK(cudaMemset(sink, 0, 64));
  cudaStream_t st;
  CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));

  // Copy bandwidth, for the percentages.
  size_t cb = 1ull << 30;
  void *ca, *cbuf;
  CHECK(cudaMalloc(&ca, cb));
  CHECK(cudaMalloc(&cbuf, cb));
  cudaEvent_t e0, e1;
  CHECK(cudaEventCreate(&e0));
  CHECK(cudaEventCreate(&e1));
  CHECK(cudaMemcpyAsync(cbuf, ca, cb, cudaMemcpyDeviceToDevice, st));
  float copy_ms = 1e30f;
  for (int t = 0; t < 5; t++) {
    CHECK(cudaEventRecord(e0, st));
    CHECK(cudaMemcpyAsync(cbuf, ca, cb, cudaMemcpyDeviceToDevice, st));
    CHECK(cudaEventRecord(e1, st));
    CHECK(cudaEventSynchronize(e1));
    float ms_;
    CHECK(cudaEventElapsedTime(&ms_, e0, e1));
    if (ms_ < copy_ms) copy_ms = ms_;
  }
  double copy_gbs = 2.0 * cb / (copy_ms * 1e-3) / 1e9;
  CHECK(cudaFree(ca));
  CHECK(cudaFree(cbuf));
  double floor_us = bytes / (copy_gbs * 1e9) * 1e6;
  printf("stages %d, weight bytes %.3f GB, copy bandwidth %.0f GB/s, weight-traffic floor %.1f us/token\n",
         n, bytes / 1e9, copy_gbs, floor_us);

  auto report = [&](const char* name, float ms_) {
    double us = ms_ * 1e3;
    printf("%-20s %9.1f us/token  %6.1f%% of floor  %7.1f tok/s\n", name, us, 100.0 * floor_us / us, 1e6 / us);
  };
  const int reps = 50;

  // CUDA graphs of per-stage launches, with and without PDL.
  for (int pdl = 1; pdl >= 0; pdl--) {
    cudaGraph_t g;
    CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < n; i++) {
      cudaLaunchConfig_t lc = {};
      lc.gridDim = dim3((stages[i].m + 7) / 8);
      lc.blockDim = dim3(256);
      lc.stream = st;
      cudaLaunchAttribute at[1];
      at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
      at[0].val.programmaticStreamSerializationAllowed = 1;
      lc.attrs = at;
      lc.numAttrs = pdl;
      CHECK(cudaLaunchKernelEx(&lc, stage_kernel, stages[i]));
    }
    CHECK(cudaStreamEndCapture(st, &g));
    Ctx c = {};
    CHECK(cudaGraphInstantiate(&c.graph, g, 0));
    report(pdl ? "graph-pdl" : "graph", time_ms(st, reps, run_graph, &c));
    CHECK(cudaGraphExecDestroy(c.graph));
    CHECK(cudaGraphDestroy(g));
  }
  // Reference result of the chain (graph without PDL just ran last): the
  // head's output, to compare the persistent kernel's against.
  std::vector<uint16_t> ref(151936), got(151936);
  CHECK(cudaStreamSynchronize(st));
  CHECK(cudaMemcpy(ref.data(), act + n * act_len, 151936 * 2, cudaMemcpyDeviceToHost));
  // A variant's result: the activations refilled as they began (so a stage
  // that writes nothing leaves the fill, not the reference's values), one
  // token, the head's output compared bit for bit.
  auto check = [&](const char* name, void (*fn)(cudaStream_t, void*), void* ctx) {
    fill<<<1024, 256, 0, st>>>((uint4*)act, (n + 1) * act_len * 2 / 16, 7u);
    fn(st, ctx);
    CHECK(cudaStreamSynchronize(st));
    CHECK(cudaMemcpy(got.data(), act + n * act_len, 151936 * 2, cudaMemcpyDeviceToHost));
    int diff = 0;
    for (int j = 0; j < 151936; j++) diff += ref[j] != got[j];
    printf("  %s head output: %d of 151936 differ from the launched chain's\n", name, diff);
  };
  // One token with stamps on: per kind of stage (the seven of a layer,
  // averaged over the 28 layers, then the final norm and the head), the
  // handover (first block past its wait minus the stage before's last end),
  // the spread of the waits (last minus first block past its wait) and the
  // work (last end minus first block past its wait), in us.
  unsigned long long* dst;
  CHECK(cudaMalloc(&dst, n * 4 * sizeof(unsigned long long)));
  std::vector<unsigned long long> hst(n * 4);
  auto timeline = [&](const char* name, void (*fn)(cudaStream_t, void*), void* ctx) {
    fn(st, ctx);
    CHECK(cudaStreamSynchronize(st));
    for (int i = 0; i < n; i++) { hst[i * 4] = hst[i * 4 + 1] = ~0ull; hst[i * 4 + 2] = hst[i * 4 + 3] = 0; }
    CHECK(cudaMemcpy(dst, hst.data(), n * 4 * 8, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpyToSymbol(g_stamps, &dst, sizeof dst));
    CHECK(cudaDeviceSynchronize());
    fn(st, ctx);
    CHECK(cudaStreamSynchronize(st));
    unsigned long long* none = nullptr;
    CHECK(cudaMemcpyToSymbol(g_stamps, &none, sizeof none));
    CHECK(cudaMemcpy(hst.data(), dst, n * 4 * 8, cudaMemcpyDeviceToHost));
    const char* kinds[9] = {"norm", "qkv 4096x1024", "attn 16x8192", "o 1024x2048", "norm", "gate+up 6144x1024", "down 1024x3072", "final norm", "head 151936x1024"};
    double hand[9] = {0}, spread[9] = {0}, work[9] = {0}, early[9] = {0};
    int cnt[9] = {0};
    for (int i = 1; i < n; i++) {
      int kind = i < 196 ? i % 7 : 7 + (i - 196);
      double wait0 = (double)hst[i * 4 + 1], wait1 = (double)hst[i * 4 + 2], end = (double)hst[i * 4 + 3];
      double prev_end = (double)hst[(i - 1) * 4 + 3], start = (double)hst[i * 4];
      hand[kind] += (wait0 - prev_end) / 1e3;
      spread[kind] += (wait1 - wait0) / 1e3;
      work[kind] += (end - wait0) / 1e3;
      early[kind] += (prev_end - start) / 1e3;
      cnt[kind]++;
    }
    double total = ((double)hst[(n - 1) * 4 + 3] - (double)hst[1]) / 1e3;
    printf("timeline %s: %.1f us from stage 0's wait to the head's end\n", name, total);
    printf("  %-18s %9s %9s %9s %12s %10s\n", "stage", "handover", "spread", "work", "started by", "us/token");
    for (int k = 0; k < 9; k++) {
      if (!cnt[k]) continue;
      double c = cnt[k];
      printf("  %-18s %9.2f %9.2f %9.2f %12.2f %10.1f\n", kinds[k], hand[k] / c, spread[k] / c, work[k] / c, early[k] / c, hand[k] + work[k]);
    }
  };

  // Shared-memory staged stages (one block per SM, SLOTS tiles of 8 rows
  // in flight), stages whose tile does not fit two slots in the budget
  // launched as before. The bits must equal the launched chain's.
  auto staged_graph = [&](int budget_kb, int bps) {
    cudaGraph_t g;
    CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < n; i++) {
      cudaLaunchConfig_t lc = {};
      lc.blockDim = dim3(256);
      lc.stream = st;
      cudaLaunchAttribute at[1];
      at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
      at[0].val.programmaticStreamSerializationAllowed = 1;
      lc.attrs = at;
      lc.numAttrs = 1;
      size_t tile = (size_t)8 * stages[i].k * 2;
      int slots = (int)((size_t)budget_kb * 1024 / tile);
      int tiles = (stages[i].m + 7) / 8;
      if (stages[i].m < 8 || stages[i].k > 256 * KC_MAX || slots < 2) {
        lc.gridDim = dim3((stages[i].m + 7) / 8);
        CHECK(cudaLaunchKernelEx(&lc, stage_kernel, stages[i]));
        continue;
      }
      int G = tiles < sms * bps ? tiles : sms * bps;
      lc.gridDim = dim3(G);
      int per = (tiles + G - 1) / G;  // tiles a block takes
      void (*k)(Stage) = nullptr;
      int use = 0;
      if (slots >= 6 && per >= 4) { k = staged_kernel<6>; use = 6; }
      else if (slots >= 4 && per >= 3) { k = staged_kernel<4>; use = 4; }
      else if (slots >= 3) { k = staged_kernel<3>; use = 3; }
      else { k = staged_kernel<2>; use = 2; }
      lc.dynamicSmemBytes = use * tile;
      CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)(use * tile)));
      CHECK(cudaLaunchKernelEx(&lc, k, stages[i]));
    }
    CHECK(cudaStreamEndCapture(st, &g));
    Ctx c = {};
    CHECK(cudaGraphInstantiate(&c.graph, g, 0));
    char name[40];
    snprintf(name, sizeof name, "staged-%dk-b%d", budget_kb, bps);
    report(name, time_ms(st, reps, run_graph, &c));
    check(name, run_graph, &c);
    if (budget_kb == 100) timeline(name, run_graph, &c);
    CHECK(cudaGraphExecDestroy(c.graph));
    CHECK(cudaGraphDestroy(g));
  };
  staged_graph(96, 1);
  staged_graph(64, 1);
  staged_graph(48, 2);
  staged_graph(100, 2);
  // The plain chain again, after the staged ones, for drift within the call.
  {
    cudaGraph_t g;
    CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < n; i++) {
      cudaLaunchConfig_t lc = {};
      lc.gridDim = dim3((stages[i].m + 7) / 8);
      lc.blockDim = dim3(256);
      lc.stream = st;
      cudaLaunchAttribute at[1];
      at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
      at[0].val.programmaticStreamSerializationAllowed = 1;
      lc.attrs = at;
      lc.numAttrs = 1;
      CHECK(cudaLaunchKernelEx(&lc, stage_kernel, stages[i]));
    }
    CHECK(cudaStreamEndCapture(st, &g));
    Ctx c = {};
    CHECK(cudaGraphInstantiate(&c.graph, g, 0));
    report("graph-pdl (again)", time_ms(st, reps, run_graph, &c));
    check("graph-pdl", run_graph, &c);
    timeline("graph-pdl", run_graph, &c);
    CHECK(cudaGraphExecDestroy(c.graph));
    CHECK(cudaGraphDestroy(g));
  }

  // Empty handovers.
  {
    cudaGraph_t g;
    CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < n; i++) {
      cudaLaunchConfig_t lc = {};
      lc.gridDim = dim3(sms);
      lc.blockDim = dim3(256);
      lc.stream = st;
      cudaLaunchAttribute at[1];
      at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
      at[0].val.programmaticStreamSerializationAllowed = 1;
      lc.attrs = at;
      lc.numAttrs = 1;
      CHECK(cudaLaunchKernelEx(&lc, empty_kernel, sink));
    }
    CHECK(cudaStreamEndCapture(st, &g));
    Ctx c = {};
    CHECK(cudaGraphInstantiate(&c.graph, g, 0));
    float ms_ = time_ms(st, reps, run_graph, &c);
    printf("%-20s %9.2f us per handover (%d launches of %d blocks)\n", "empty-graph-pdl", ms_ * 1e3 / n, n, sms);
    CHECK(cudaGraphExecDestroy(c.graph));
    CHECK(cudaGraphDestroy(g));
  }

  int max_bps = 0;
  CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&max_bps, persistent_kernel<true>, 256, 0));
  printf("persistent kernel: at most %d blocks of 256 per SM\n", max_bps);
  for (int bps = 1; bps <= max_bps && bps <= 8; bps *= 2) {
    Ctx c = {};
    c.dstages = dstages;
    c.n = n;
    c.blocks = bps * sms;
    c.count = sync;
    c.gen = sync + 16;
    char name[32];
    c.barrier = false;
    snprintf(name, sizeof name, "nobarrier-b%d", bps);
    report(name, time_ms(st, reps, run_persistent, &c));
    c.barrier = true;
    snprintf(name, sizeof name, "persistent-b%d", bps);
    report(name, time_ms(st, reps, run_persistent, &c));
    check(name, run_persistent, &c);
    float ms_ = time_ms(st, reps, run_barriers, &c);
    snprintf(name, sizeof name, "barrier-b%d", bps);
    printf("%-20s %9.2f us per handover (%d barriers of %d blocks)\n", name, ms_ * 1e3 / n, n, c.blocks);
  }
  // Negative control for the comparisons above.
  {
    Ctx c = {};
    c.dstages = dstages;
    c.n = n;
    c.blocks = sms;
    c.count = sync;
    c.gen = sync + 16;
    printf("control (must differ: its stages read inputs not yet written):\n");
    check("nobarrier-b1", run_persistent, &c);
  }
  return 0;
}
