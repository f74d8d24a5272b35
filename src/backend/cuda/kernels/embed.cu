// Embedding lookup: out[r] = table[ids[r]]. One block per token.
extern "C" __global__ void embed_bf16(const bf16_t* table, const unsigned int* ids, bf16_t* out, int hidden) {
    pdl_sync();
    size_t r = blockIdx.x;
    size_t id = ids[r];
    for (int c = threadIdx.x; c < hidden; c += blockDim.x) out[r * hidden + c] = table[id * hidden + c];
}
