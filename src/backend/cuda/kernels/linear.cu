// y[r, o] = sum_k x[r, k] * w[o, k]: one warp per output column o, lanes
// stride over k with f32 accumulation and a butterfly. No atomics: the same
// bits on every run (the `deterministic` reduction mode).
extern "C" __global__ void linear_bf16(const bf16_t* x, const bf16_t* w, bf16_t* y, int n, int k, int m) {
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
