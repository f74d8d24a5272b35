// KV cache append at the positions held on the device: row r of k and v
// goes to cache row pos[r] (so a recorded decode step replays anywhere).
__device__ __forceinline__ void append_row(const bf16_t* k, const bf16_t* v, bf16_t* kc, bf16_t* vc, size_t r, size_t at, int kv_dim) {
    for (int c = threadIdx.x; c < kv_dim; c += blockDim.x) {
        kc[at + c] = k[r * kv_dim + c];
        vc[at + c] = v[r * kv_dim + c];
    }
}

extern "C" __global__ void cache_append_bf16(const bf16_t* k, const bf16_t* v, bf16_t* kc, bf16_t* vc, const int* pos, int kv_dim) {
    pdl_sync();
    size_t r = blockIdx.x;
    append_row(k, v, kc, vc, r, (size_t)pos[r] * kv_dim, kv_dim);
}

// A batched decode step: row r of k and v is sequence r's, appended to its
// own cache (key and value addresses caches[r] and caches[batch + r]) at
// row pos[r].
extern "C" __global__ void cache_append_batch_bf16(const bf16_t* k, const bf16_t* v, const unsigned long long* caches, const int* pos, int batch, int kv_dim) {
    pdl_sync();
    size_t r = blockIdx.x;
    append_row(k, v, (bf16_t*)caches[r], (bf16_t*)caches[batch + r], r, (size_t)pos[r] * kv_dim, kv_dim);
}
