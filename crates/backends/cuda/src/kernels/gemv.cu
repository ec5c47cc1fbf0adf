// gemv_bf16: y [T, N] = x [T, K] W^T + b for small T, W [N, K] bf16 with K % 8 == 0.
// x is staged in shared memory as two planes of float4 per token (plane 0 holds x[8j..8j+3],
// plane 1 x[8j+4..8j+7]) so the warp's 16-byte reads are conflict-free. Each warp computes
// whole rows (a grid-stride loop over rows, so the staging is amortised); each lane reads 16
// bytes (8 weights) per step with several loads in flight. f32 accumulation.
#define GEMV_T 4  // tokens per pass over the weights

__device__ __forceinline__ float dot8_bf16(W4 w, F4 a, F4 b, float acc) {
    acc = fmaf(__uint_as_float(w.x << 16), a.x, acc);
    acc = fmaf(__uint_as_float(w.x & 0xffff0000u), a.y, acc);
    acc = fmaf(__uint_as_float(w.y << 16), a.z, acc);
    acc = fmaf(__uint_as_float(w.y & 0xffff0000u), a.w, acc);
    acc = fmaf(__uint_as_float(w.z << 16), b.x, acc);
    acc = fmaf(__uint_as_float(w.z & 0xffff0000u), b.y, acc);
    acc = fmaf(__uint_as_float(w.w << 16), b.z, acc);
    acc = fmaf(__uint_as_float(w.w & 0xffff0000u), b.w, acc);
    return acc;
}

// Dynamic shared memory: T * K floats.
extern "C" __global__ void gemv_bf16(const float* x, const u16* w, const void* bias, int bdt,
                                     float* y, int T, int N, int K) {
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
    for (i64 n = (i64)blockIdx.x * nw + (threadIdx.x >> 5); n < N; n += stride) {
        const W4* wr = (const W4*)(w + n * K);
        float b = bias ? ldf(bias, bdt, n) : 0.0f;
        for (int t0 = 0; t0 < T; t0 += GEMV_T) {
            float acc[GEMV_T];
#pragma unroll
            for (int r = 0; r < GEMV_T; r++) acc[r] = 0.0f;
            int j = lane;
            // Four loads in flight per lane.
            for (; j + 96 < K8; j += 128) {
                W4 q[4];
#pragma unroll
                for (int u = 0; u < 4; u++) q[u] = ldg16_stream(wr + j + 32 * u);
#pragma unroll
                for (int u = 0; u < 4; u++)
#pragma unroll
                    for (int r = 0; r < GEMV_T; r++)
                        if (t0 + r < T)
                            acc[r] = dot8_bf16(q[u], xs[(2 * (t0 + r)) * K8 + j + 32 * u],
                                               xs[(2 * (t0 + r) + 1) * K8 + j + 32 * u], acc[r]);
            }
            for (; j < K8; j += 32) {
                W4 q = ldg16_stream(wr + j);
#pragma unroll
                for (int r = 0; r < GEMV_T; r++)
                    if (t0 + r < T)
                        acc[r] = dot8_bf16(q, xs[(2 * (t0 + r)) * K8 + j],
                                           xs[(2 * (t0 + r) + 1) * K8 + j], acc[r]);
            }
#pragma unroll
            for (int r = 0; r < GEMV_T; r++) {
                float s = warp_sum(acc[r]);
                if (lane == 0 && t0 + r < T) y[(i64)(t0 + r) * N + n] = s + b;
            }
        }
    }
}
