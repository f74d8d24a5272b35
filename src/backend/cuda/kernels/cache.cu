// KV cache append at the positions held on the device: row r of k and v
// goes to cache row pos[r] (so a recorded decode step replays anywhere).
extern "C" __global__ void cache_append_bf16(const bf16_t* k, const bf16_t* v, bf16_t* kc, bf16_t* vc, const int* pos, int kv_dim) {
    pdl_sync();
    size_t r = blockIdx.x, at = (size_t)pos[r] * kv_dim;
    for (int c = threadIdx.x; c < kv_dim; c += blockDim.x) {
        kc[at + c] = k[r * kv_dim + c];
        vc[at + c] = v[r * kv_dim + c];
    }
}
