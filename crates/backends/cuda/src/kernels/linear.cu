// linear: y [T, N] = x [T, K] W^T + b, W [N, K] in its stored dtype, f32 accumulation.
// One warp per output row; the warp walks the tokens TB at a time so each weight element is
// loaded once per TB tokens.
#define TB 8

template <typename W>
__device__ __forceinline__ void linear_impl(const float* x, const void* w, const void* bias,
                                            int bdt, float* y, int T, int N, int K) {
    int nw = blockDim.x >> 5;
    i64 n = (i64)blockIdx.x * nw + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (n >= N) return;
    float b = bias ? ldf(bias, bdt, n) : 0.0f;
    const i64 row = n * K;
    for (int t0 = 0; t0 < T; t0 += TB) {
        float acc[TB];
#pragma unroll
        for (int r = 0; r < TB; r++) acc[r] = 0.0f;
        for (int k = lane; k < K; k += 32) {
            float wv = W::ld(w, row + k);
#pragma unroll
            for (int r = 0; r < TB; r++)
                if (t0 + r < T) acc[r] += wv * x[(i64)(t0 + r) * K + k];
        }
#pragma unroll
        for (int r = 0; r < TB; r++) {
            float s = warp_sum(acc[r]);
            if (lane == 0 && t0 + r < T) y[(i64)(t0 + r) * N + n] = s + b;
        }
    }
}

extern "C" __global__ void linear_f32(const float* x, const void* w, const void* bias, int bdt,
                                      float* y, int T, int N, int K) {
    linear_impl<LdF32>(x, w, bias, bdt, y, T, N, K);
}
extern "C" __global__ void linear_bf16(const float* x, const void* w, const void* bias, int bdt,
                                       float* y, int T, int N, int K) {
    linear_impl<LdBf16>(x, w, bias, bdt, y, T, N, K);
}
extern "C" __global__ void linear_f16(const float* x, const void* w, const void* bias, int bdt,
                                      float* y, int T, int N, int K) {
    linear_impl<LdF16>(x, w, bias, bdt, y, T, N, K);
}
