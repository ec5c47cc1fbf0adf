// topk_softmax: per token, the k largest logits (NaN above all, ties to the lower index) and
// the softmax over those k. One thread per token; E <= 1024, k <= 32.
__device__ __forceinline__ bool above(float a, float b) {
    if (a != a) return b == b;
    return a > b;
}

extern "C" __global__ void topk_softmax(const float* x, int* ids, float* w, int T, int E, int K) {
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= T) return;
    const float* row = x + (i64)t * E;
    int* id = ids + (i64)t * K;
    float* wt = w + (i64)t * K;
    u32 taken[32];
    for (int i = 0; i < 32; i++) taken[i] = 0;
    for (int s = 0; s < K; s++) {
        int best = -1;
        for (int i = 0; i < E; i++) {
            if ((taken[i >> 5] >> (i & 31)) & 1u) continue;
            if (best < 0 || above(row[i], row[best])) best = i;
        }
        taken[best >> 5] |= 1u << (best & 31);
        id[s] = best;
        wt[s] = row[best];
    }
    float m = NEG_INF;
    for (int s = 0; s < K; s++) m = fmaxf(m, wt[s]);
    float sum = 0.0f;
    for (int s = 0; s < K; s++) {
        float e = expf(wt[s] - m);
        wt[s] = e;
        sum += e;
    }
    float inv = 1.0f / sum;
    for (int s = 0; s < K; s++) wt[s] *= inv;
}
