// argmax: per row, the index of the maximum; the first on ties; the first NaN if any.
__device__ __forceinline__ bool first_better(float av, int ai, float bv, int bi) {
    if (ai < 0) return false;
    if (bi < 0) return true;
    bool an = av != av, bn = bv != bv;
    if (an && bn) return ai < bi;
    if (an) return true;
    if (bn) return false;
    if (av > bv) return true;
    if (av < bv) return false;
    return ai < bi;
}

extern "C" __global__ void argmax_rows(const float* x, int* out, int N) {
    __shared__ float sv[32];
    __shared__ int si[32];
    i64 t = blockIdx.x;
    const float* row = x + t * N;
    float bv = 0.0f;
    int bi = -1;
    for (int i = threadIdx.x; i < N; i += blockDim.x) {
        float v = row[i];
        if (first_better(v, i, bv, bi)) {
            bv = v;
            bi = i;
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (first_better(ov, oi, bv, bi)) {
            bv = ov;
            bi = oi;
        }
    }
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if (lane == 0) {
        sv[wid] = bv;
        si[wid] = bi;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < nw; w++)
            if (first_better(sv[w], si[w], bv, bi)) {
                bv = sv[w];
                bi = si[w];
            }
        out[t] = bi < 0 ? 0 : bi;
    }
}

// Greedy decoding queued on the device (Backend::decode_chain): after step j, the token it
// chose becomes the next step's input, is kept as the chain's j-th, and the position moves on.
extern "C" __global__ void chain_advance(const int* argmax, int* ids, int* pos, int* tokens,
                                         int j) {
    if (threadIdx.x == 0 && blockIdx.x == 0) {
        const int t = argmax[0];
        ids[0] = t;
        tokens[j] = t;
        pos[0] += 1;
    }
}
