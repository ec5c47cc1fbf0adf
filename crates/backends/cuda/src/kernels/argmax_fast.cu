// Argmax of one long row (the lm_head's logits at decode) over many blocks: each value becomes
// a 64-bit key (order-preserving float bits, then the complemented index, so the larger value
// wins and ties go to the first index); NaN beats every number (the first NaN wins, as
// argmax_rows and the CPU backend do); -0 counts as +0.
// argmax_partial: grid-stride, one key per block; argmax_final: one block over the partials.

__device__ __forceinline__ unsigned long long am_key(float v, u32 i) {
    if (v != v) return (0xffffffffull << 32) | (unsigned long long)(0xffffffffu - i);
    if (v == 0.0f) v = 0.0f;
    u32 u = __float_as_uint(v);
    u32 k = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return ((unsigned long long)k << 32) | (unsigned long long)(0xffffffffu - i);
}

__device__ __forceinline__ unsigned long long am_max(unsigned long long a, unsigned long long b) {
    return a > b ? a : b;
}

__device__ unsigned long long am_block_max(unsigned long long k) {
    __shared__ unsigned long long sh[32];
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) k = am_max(k, __shfl_xor_sync(0xffffffffu, k, o));
    if (lane == 0) sh[wid] = k;
    __syncthreads();
    k = 0ull;
    for (int w = 0; w < nw; w++) k = am_max(k, sh[w]);
    return k;
}

extern "C" __global__ void argmax_partial(const float* x, unsigned long long* part, int N) {
    unsigned long long k = 0ull;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < N; i += gridDim.x * blockDim.x)
        k = am_max(k, am_key(x[i], (u32)i));
    k = am_block_max(k);
    if (threadIdx.x == 0) part[blockIdx.x] = k;
}

extern "C" __global__ void argmax_final(const unsigned long long* part, int n, int* out) {
    unsigned long long k = 0ull;
    for (int i = threadIdx.x; i < n; i += blockDim.x) k = am_max(k, part[i]);
    k = am_block_max(k);
    if (threadIdx.x == 0) out[0] = k == 0ull ? 0 : (int)(0xffffffffu - (u32)(k & 0xffffffffull));
}
