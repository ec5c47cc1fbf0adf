// gemv_bf16: y_s [T, N_s] = x [T, K] W_s^T + b_s for small T, for up to three weight
// matrices W_s [N_s, K] bf16 (K % 8 == 0) that read the same x: a linear is one segment,
// q/k/v of a layer are three in one launch (N_1 = N_2 = 0 when unused).
// x is staged in shared memory as two planes of float4 per token (plane 0 holds x[8j..8j+3],
// plane 1 x[8j+4..8j+7]) so the warp's 16-byte reads are conflict-free. Each warp computes
// whole rows (a grid-stride loop over the rows of all segments, so the staging is amortised);
// each lane issues all its 16-byte weight loads of a row (up to GEMV_U, 8 weights each) before
// using any, so a row of K <= 32 * 8 * GEMV_U costs one memory round trip. f32 accumulation.
#define GEMV_T 8   // tokens at most (the host launches chunks of up to 8)
#define GEMV_U 12  // 16-byte loads in flight per lane

// Up to TT tokens (T <= TT); dynamic shared memory: T * K floats.
template <int TT>
__device__ __forceinline__ void gemv_rows(const float* x, int T, int K, int bdt, const u16* w0,
                                          const void* b0, float* y0, int n0, const u16* w1,
                                          const void* b1, float* y1, int n1, const u16* w2,
                                          const void* b2, float* y2, int n2) {
    extern __shared__ F4 xs[];
    const int K8 = K >> 3;
    for (int i = threadIdx.x; i < T * K8; i += blockDim.x) {
        int t = i / K8, j = i - t * K8;
        const F4* src = (const F4*)(x + (i64)t * K + 8 * j);
        xs[(2 * t) * K8 + j] = src[0];
        xs[(2 * t + 1) * K8 + j] = src[1];
    }
    __syncthreads();
    const int lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    const i64 stride = (i64)gridDim.x * nw;
    const i64 N = (i64)n0 + n1 + n2;
    for (i64 row = (i64)blockIdx.x * nw + (threadIdx.x >> 5); row < N; row += stride) {
        // This row's segment.
        const u16* w = w0;
        const void* bias = b0;
        float* y = y0;
        i64 n = row;
        int N_s = n0;
        if (n >= n0) {
            n -= n0;
            if (n < n1) {
                w = w1, bias = b1, y = y1, N_s = n1;
            } else {
                n -= n1;
                w = w2, bias = b2, y = y2, N_s = n2;
            }
        }
        const W4* wr = (const W4*)(w + n * K);
        const float b = bias ? ldf(bias, bdt, n) : 0.0f;
        float acc[TT];
#pragma unroll
        for (int r = 0; r < TT; r++) acc[r] = 0.0f;
        for (int j0 = lane; j0 < K8; j0 += 32 * GEMV_U) {
            W4 q[GEMV_U];
#pragma unroll
            for (int u = 0; u < GEMV_U; u++)
                q[u] = j0 + 32 * u < K8 ? ldg16_stream(wr + j0 + 32 * u) : W4{0, 0, 0, 0};
#pragma unroll
            for (int u = 0; u < GEMV_U; u++) {
                const int j = j0 + 32 * u;
                if (j < K8) {
#pragma unroll
                    for (int r = 0; r < TT; r++)
                        if (r < T)
                            acc[r] = dot8_bf16(q[u], xs[(2 * r) * K8 + j],
                                               xs[(2 * r + 1) * K8 + j], acc[r]);
                }
            }
        }
#pragma unroll
        for (int r = 0; r < TT; r++) {
            if (r < T) {
                float s = warp_sum(acc[r]);
                if (lane == 0) y[(i64)r * N_s + n] = s + b;
            }
        }
    }
}

#define GEMV_ARGS                                                                            \
    const float *x, int T, int K, int bdt, const u16 *w0, const void *b0, float *y0, int n0, \
        const u16 *w1, const void *b1, float *y1, int n1, const u16 *w2, const void *b2,     \
        float *y2, int n2
#define GEMV_PASS x, T, K, bdt, w0, b0, y0, n0, w1, b1, y1, n1, w2, b2, y2, n2

extern "C" __global__ void __launch_bounds__(256) gemv_bf16(GEMV_ARGS) {
    gemv_rows<GEMV_T>(GEMV_PASS);
}

// One token (decode): one accumulator, and at most 80 registers so that 3 blocks fit an SM.
extern "C" __global__ void __launch_bounds__(256, 3) gemv_bf16_t1(GEMV_ARGS) {
    gemv_rows<1>(GEMV_PASS);
}
