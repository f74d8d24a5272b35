// Does an m16n8k16 bf16 MMA's output element depend on where its row of A
// or its column of B sits in the tile, or on the other columns' values?
// linear_tc.cu's batch invariance rests on it not doing so. Random tiles
// (values over 12 binades, a quarter of the accumulators nonzero), chains
// of K / 16 MMAs, then B's columns and A's rows shifted cyclically and the
// companions of column 0 zeroed; every output compared bit for bit.
// Run by `ci/device-cuda.sh mma-probe` (nvcc -arch=sm_90).
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <cmath>
#include <cuda_runtime.h>

__device__ void mma(float (&d)[4], unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0, unsigned b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
    : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]) : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// A: T tiles of 16 x K (row major), B: T tiles of 8 x K (B transposed, row
// major), C and D: T tiles of 16 x 8. One warp per tile.
// `split` (the control): the second half of the chain accumulates apart
// and is added at the end, an order the comparison must see.
__global__ void run(const uint16_t* A, const uint16_t* B, const float* C, float* D, int K, int split) {
  int tr = blockIdx.x, lane = threadIdx.x, g = lane >> 2, t = lane & 3;
  const uint16_t* a = A + (size_t)tr * 16 * K;
  const uint16_t* b = B + (size_t)tr * 8 * K;
  const float* c = C + tr * 128;
  float* dd = D + tr * 128;
  float d[4] = {c[g * 8 + 2 * t], c[g * 8 + 2 * t + 1], c[(g + 8) * 8 + 2 * t], c[(g + 8) * 8 + 2 * t + 1]};
  float e[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (int k0 = 0; k0 < K; k0 += 16) {
    auto pa = [&](int r, int col) { return *(const unsigned*)(a + r * K + k0 + col); };
    auto pb = [&](int n, int kk) { return *(const unsigned*)(b + n * K + k0 + kk); };
    if (split && k0 >= K / 2)
      mma(e, pa(g, 2 * t), pa(g + 8, 2 * t), pa(g, 2 * t + 8), pa(g + 8, 2 * t + 8), pb(g, 2 * t), pb(g, 2 * t + 8));
    else
      mma(d, pa(g, 2 * t), pa(g + 8, 2 * t), pa(g, 2 * t + 8), pa(g + 8, 2 * t + 8), pb(g, 2 * t), pb(g, 2 * t + 8));
  }
  for (int i = 0; i < 4; i++) d[i] += e[i];
  dd[g * 8 + 2 * t] = d[0];
  dd[g * 8 + 2 * t + 1] = d[1];
  dd[(g + 8) * 8 + 2 * t] = d[2];
  dd[(g + 8) * 8 + 2 * t + 1] = d[3];
}

static uint64_t state = 88172645463325252ull;
static uint64_t rnd() { state ^= state << 13; state ^= state >> 7; state ^= state << 17; return state; }
static uint16_t bf(float f) { uint32_t u; memcpy(&u, &f, 4); return (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16); }
static float val() { float m = (float)((rnd() >> 40) / 16777216.0) * 2 - 1; int e = (int)(rnd() % 12) - 6; return ldexpf(m, e); }

int main() {
  const int T = 4096;
  long total_bad = 0;
  for (int K : {16, 64, 4096}) {
    size_t na = (size_t)T * 16 * K, nb = (size_t)T * 8 * K;
    uint16_t *A = (uint16_t*)malloc(na * 2), *B = (uint16_t*)malloc(nb * 2);
    uint16_t *A2 = (uint16_t*)malloc(na * 2), *B2 = (uint16_t*)malloc(nb * 2);
    float *C = (float*)malloc(T * 512), *C2 = (float*)malloc(T * 512), *D = (float*)malloc(T * 512), *D2 = (float*)malloc(T * 512);
    for (size_t i = 0; i < na; i++) A[i] = bf(val());
    for (size_t i = 0; i < nb; i++) B[i] = bf(val());
    for (int i = 0; i < T * 128; i++) C[i] = (rnd() % 4 == 0) ? val() : 0.0f;
    uint16_t *dA, *dB;
    float *dC, *dD;
    cudaMalloc(&dA, na * 2); cudaMalloc(&dB, nb * 2); cudaMalloc(&dC, T * 512); cudaMalloc(&dD, T * 512);
    auto go = [&](uint16_t* a, uint16_t* b, float* c, float* d, int split = 0) {
      cudaMemcpy(dA, a, na * 2, cudaMemcpyHostToDevice);
      cudaMemcpy(dB, b, nb * 2, cudaMemcpyHostToDevice);
      cudaMemcpy(dC, c, T * 512, cudaMemcpyHostToDevice);
      run<<<T, 32>>>(dA, dB, dC, dD, K, split);
      cudaMemcpy(d, dD, T * 512, cudaMemcpyDeviceToHost);
    };
    go(A, B, C, D);
    long control = 0;
    if (K > 16) {
      go(A, B, C, D2, 1);
      for (int i = 0; i < T * 128; i++) control += memcmp(&D[i], &D2[i], 4) != 0;
      printf("K=%d control (chain split in two): %ld of %d outputs differ\n", K, control, T * 128);
      if (control == 0) total_bad += 1;
    }
    for (int sh = 1; sh < 8; sh++) {
      for (int tr = 0; tr < T; tr++)
        for (int n = 0; n < 8; n++) {
          memcpy(B2 + ((size_t)tr * 8 + (n + sh) % 8) * K, B + ((size_t)tr * 8 + n) * K, K * 2);
          for (int r = 0; r < 16; r++) C2[tr * 128 + r * 8 + (n + sh) % 8] = C[tr * 128 + r * 8 + n];
        }
      go(A, B2, C2, D2);
      long bad = 0;
      for (int tr = 0; tr < T; tr++)
        for (int r = 0; r < 16; r++)
          for (int n = 0; n < 8; n++) bad += memcmp(&D[tr * 128 + r * 8 + n], &D2[tr * 128 + r * 8 + (n + sh) % 8], 4) != 0;
      printf("K=%d B column shift %d: %ld of %d outputs differ\n", K, sh, bad, T * 128);
      total_bad += bad;
    }
    for (int sh = 1; sh < 16; sh += 3) {
      for (int tr = 0; tr < T; tr++)
        for (int r = 0; r < 16; r++) {
          memcpy(A2 + ((size_t)tr * 16 + (r + sh) % 16) * K, A + ((size_t)tr * 16 + r) * K, K * 2);
          for (int n = 0; n < 8; n++) C2[tr * 128 + ((r + sh) % 16) * 8 + n] = C[tr * 128 + r * 8 + n];
        }
      go(A2, B, C2, D2);
      long bad = 0;
      for (int tr = 0; tr < T; tr++)
        for (int r = 0; r < 16; r++)
          for (int n = 0; n < 8; n++) bad += memcmp(&D[tr * 128 + r * 8 + n], &D2[tr * 128 + ((r + sh) % 16) * 8 + n], 4) != 0;
      printf("K=%d A row shift %d: %ld of %d outputs differ\n", K, sh, bad, T * 128);
      total_bad += bad;
    }
    for (int tr = 0; tr < T; tr++)
      for (int n = 0; n < 8; n++)
        for (int kk = 0; kk < K; kk++) B2[((size_t)tr * 8 + n) * K + kk] = n == 0 ? B[((size_t)tr * 8) * K + kk] : 0;
    go(A, B2, C, D2);
    long bad = 0;
    for (int tr = 0; tr < T; tr++)
      for (int r = 0; r < 16; r++) bad += memcmp(&D[tr * 128 + r * 8], &D2[tr * 128 + r * 8], 4) != 0;
    printf("K=%d companions zeroed: %ld of %d column-0 outputs differ\n", K, bad, T * 16);
    total_bad += bad;
    cudaFree(dA); cudaFree(dB); cudaFree(dC); cudaFree(dD);
    free(A); free(B); free(A2); free(B2); free(C); free(C2); free(D); free(D2);
  }
  cudaError_t e = cudaGetLastError();
  printf("CUDA: %s; %ld outputs moved in all (a control that moved none counts as one)\n", cudaGetErrorString(e), total_bad);
  return (e != cudaSuccess || total_bad != 0) ? 1 : 0;
}
