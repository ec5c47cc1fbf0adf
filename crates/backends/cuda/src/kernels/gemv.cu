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

// Row `row` of the segments laid end to end: its weights, bias, output and index in its
// segment.
struct GemvRow {
    const u16* w;
    const void* bias;
    float* y;
    i64 n;
    int N_s;
};

__device__ __forceinline__ GemvRow gemv_row(i64 row, int K, const u16* w0, const void* b0,
                                            float* y0, int n0, const u16* w1, const void* b1,
                                            float* y1, int n1, const u16* w2, const void* b2,
                                            float* y2, int n2) {
    GemvRow r{w0, b0, y0, row, n0};
    if (row >= n0) {
        r.n -= n0;
        if (r.n < n1) {
            r.w = w1, r.bias = b1, r.y = y1, r.N_s = n1;
        } else {
            r.n -= n1;
            r.w = w2, r.bias = b2, r.y = y2, r.N_s = n2;
        }
    }
    r.w += r.n * K;
    return r;
}

// U 16-byte weight loads of a row: chunks j0 + 32 u (< K8), all issued at once.
template <int U>
__device__ __forceinline__ void gemv_load_n(const W4* wr, int j0, int K8, W4* q) {
#pragma unroll
    for (int u = 0; u < U; u++)
        q[u] = j0 + 32 * u < K8 ? ldg16_stream(wr + j0 + 32 * u) : W4{0, 0, 0, 0};
}

// Up to TT tokens (T <= TT); dynamic shared memory: T * K floats. The warp's first row's
// first trip of weight loads is issued before the block stages x (they do not need it), so
// the weights are on their way during the staging.
template <int TT>
__device__ __forceinline__ void gemv_rows(const float* x, int T, int K, int bdt, const u16* w0,
                                          const void* b0, float* y0, int n0, const u16* w1,
                                          const void* b1, float* y1, int n1, const u16* w2,
                                          const void* b2, float* y2, int n2) {
    extern __shared__ F4 xs[];
    const int K8 = K >> 3;
    const int lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    const i64 stride = (i64)gridDim.x * nw;
    const i64 N = (i64)n0 + n1 + n2;
    i64 row = (i64)blockIdx.x * nw + (threadIdx.x >> 5);
    W4 q[GEMV_U];
    bool have = row < N;
    if (have) {
        const GemvRow r = gemv_row(row, K, w0, b0, y0, n0, w1, b1, y1, n1, w2, b2, y2, n2);
        gemv_load_n<GEMV_U>((const W4*)r.w, lane, K8, q);
    }
    for (int i = threadIdx.x; i < T * K8; i += blockDim.x) {
        int t = i / K8, j = i - t * K8;
        const F4* src = (const F4*)(x + (i64)t * K + 8 * j);
        xs[(2 * t) * K8 + j] = src[0];
        xs[(2 * t + 1) * K8 + j] = src[1];
    }
    __syncthreads();
    for (; row < N; row += stride) {
        const GemvRow r = gemv_row(row, K, w0, b0, y0, n0, w1, b1, y1, n1, w2, b2, y2, n2);
        const W4* wr = (const W4*)r.w;
        const float b = r.bias ? ldf(r.bias, bdt, r.n) : 0.0f;
        float acc[TT];
#pragma unroll
        for (int t = 0; t < TT; t++) acc[t] = 0.0f;
        for (int j0 = lane; j0 < K8; j0 += 32 * GEMV_U) {
            if (!have) gemv_load_n<GEMV_U>(wr, j0, K8, q);
            have = false;
#pragma unroll
            for (int u = 0; u < GEMV_U; u++) {
                const int j = j0 + 32 * u;
                if (j < K8) {
#pragma unroll
                    for (int t = 0; t < TT; t++)
                        if (t < T)
                            acc[t] = dot8_bf16(q[u], xs[(2 * t) * K8 + j],
                                               xs[(2 * t + 1) * K8 + j], acc[t]);
                }
            }
        }
#pragma unroll
        for (int t = 0; t < TT; t++) {
            if (t < T) {
                float s = warp_sum(acc[t]);
                if (lane == 0) r.y[(i64)t * r.N_s + r.n] = s + b;
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

// One token (decode), software-pipelined: a warp's rows are cut into units of 32 GEMV_NU
// chunks (a row of K <= 1536 is one unit, 2880 two, 4096 three) and each unit's loads are
// issued before the previous unit is used, so a warp always has a unit in flight; the flat
// kernel waited a whole round trip a row, in ~1.6 waves of rows for q/k/v and two trips a row
// for K > 3072. At most 80 registers so that 3 blocks fit an SM. Launched early (PDL): the
// first unit's weights are on their way while the kernel before finishes.
#define GEMV_NU 6

__device__ __forceinline__ float gemv_unit_dot(const W4* q, const F4* xs, int j0, int K8,
                                               float acc) {
#pragma unroll
    for (int u = 0; u < GEMV_NU; u++) {
        const int j = j0 + 32 * u;
        if (j < K8) acc = dot8_bf16(q[u], xs[j], xs[K8 + j], acc);
    }
    return acc;
}

// The one-token kernel's body; stage(xs, K8) writes the token's x into shared memory as two
// planes of float4 (xs[j] = x[8j..8j+3], xs[K8 + j] = x[8j+4..8j+7]) after the wait;
// pre(xs, K8) runs before the wait, after the first weight loads (reads of what no kernel
// still running writes).
template <class Pre, class Stage>
__device__ __forceinline__ void gemv_t1_rows(int K, int bdt, const u16* w0, const void* b0,
                                             float* y0, int n0, const u16* w1, const void* b1,
                                             float* y1, int n1, const u16* w2, const void* b2,
                                             float* y2, int n2, Pre pre, Stage stage) {
    pdl_trigger();  // the kernel after it (launched early) may start its prologue
    extern __shared__ F4 gemv_x[];
    const int K8 = K >> 3;
    const int lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    const i64 W = (i64)gridDim.x * nw;
    const i64 N = (i64)n0 + n1 + n2;
    const int span = 32 * GEMV_NU;
    const int P = (K8 + span - 1) / span;  // units a row
    // The unit computed (row, part) and the one after it (lr, lp).
    i64 row = (i64)blockIdx.x * nw + (threadIdx.x >> 5);
    int part = 0;
    auto step = [&](i64& r, int& p) {
        if (++p == P) {
            p = 0;
            r += W;
        }
    };
    auto load = [&](W4* q, i64 r, int p) {
        if (r < N) {
            const GemvRow g = gemv_row(r, K, w0, b0, y0, n0, w1, b1, y1, n1, w2, b2, y2, n2);
            gemv_load_n<GEMV_NU>((const W4*)g.w, p * span + lane, K8, q);
        }
    };
    auto finish = [&](float acc) {
        const float s = warp_sum(acc);
        const GemvRow g = gemv_row(row, K, w0, b0, y0, n0, w1, b1, y1, n1, w2, b2, y2, n2);
        if (lane == 0) g.y[g.n] = s + (g.bias ? ldf(g.bias, bdt, g.n) : 0.0f);
    };
    W4 qa[GEMV_NU], qb[GEMV_NU];
    load(qa, row, part);  // weights: written by no kernel of the step
    pre(gemv_x, K8);
    pdl_wait();
    stage(gemv_x, K8);
    __syncthreads();
    i64 lr = row;
    int lp = part;
    step(lr, lp);
    float acc = 0.0f;
    // One unit: the next one's loads into `next`, then `cur` used; the buffers swap roles
    // each unit (two calls, so both stay in registers).
    auto unit = [&](W4* cur, W4* next) {
        load(next, lr, lp);
        acc = gemv_unit_dot(cur, gemv_x, part * span + lane, K8, acc);
        if (part == P - 1) {
            finish(acc);
            acc = 0.0f;
        }
        row = lr, part = lp;
        step(lr, lp);
    };
    while (row < N) {
        unit(qa, qb);
        if (row >= N) break;
        unit(qb, qa);
    }
}

#define GEMV_T1_ARGS                                                                          \
    int K, int bdt, const u16 *w0, const void *b0, float *y0, int n0, const u16 *w1,          \
        const void *b1, float *y1, int n1, const u16 *w2, const void *b2, float *y2, int n2
#define GEMV_T1_PASS K, bdt, w0, b0, y0, n0, w1, b1, y1, n1, w2, b2, y2, n2

extern "C" __global__ void __launch_bounds__(256, 3) gemv_bf16_t1(GEMV_ARGS) {
    gemv_t1_rows(GEMV_T1_PASS, [](F4*, int) {}, [&](F4* xs, int K8) {
        for (int i = threadIdx.x; i < K8; i += blockDim.x) {
            const F4* src = (const F4*)(x + 8 * i);
            xs[i] = src[0];
            xs[K8 + i] = src[1];
        }
    });
}

// The MoE's combine, residual add and RMSNorm (moe_combine_add_norm's arithmetic, one token)
// formed by every block while it stages x, so the layer's first linears need no combine
// launch: m = the token's expert rows y[pair] * wts[pair] in ascending expert id, sum = resid +
// m (stored by block 0), x = rms_norm(sum) * nw. 256 threads: H = K <= 4096. Dynamic shared
// memory: 2 K floats (x, then the residual's copy).
// Launched early behind the MoE's down projection, which starts only after the router before
// gate_up has finished: so the residual (written before the router) is copied into shared
// memory and the norm weight asked into L1 before the wait, and with `logits` (the router's,
// whose top-k the MoE kernels took themselves) the token's experts and weights are formed
// then too (topk_small_warp, as gate_up formed them), not read from gate_up's after it.
extern "C" __global__ void __launch_bounds__(256, 3)
    gemv_bf16_t1_moe(const float* y, const int* ids, const float* wts, const float* resid,
                     float* sum_out, const void* nw, int nwdt, float eps, int k, int E,
                     const float* logits, GEMV_T1_ARGS) {
    __shared__ int picked[32];
    __shared__ float picked_w[32];
    gemv_t1_rows(
        GEMV_T1_PASS,
        [&](F4* xs, int K8) {
            const F4* rs = (const F4*)resid;
            F4* rcopy = xs + 2 * K8;
            if (resid)
                for (int c = threadIdx.x; c < (K >> 2); c += blockDim.x)
                    cp_async<16>(rcopy + c, rs + c);
            cp_async_commit();
            const int nwb = nwdt == DT_F32 ? 4 * K : 2 * K;
            for (int i = 128 * threadIdx.x; i < nwb; i += 128 * blockDim.x)
                prefetch_l1((const u8*)nw + i);
            if (logits) {
                if (threadIdx.x < 32) {
                    int id;
                    float wt;
                    topk_small_warp(logits, E, k, threadIdx.x, id, wt);
                    if (threadIdx.x < k) {
                        picked[threadIdx.x] = id;
                        picked_w[threadIdx.x] = wt;
                    }
                }
                __syncthreads();
            }
        },
        [&](F4* xs, int K8) {
            F4 v[RN_V];
            moe_combine_chunks<1>(0, y, logits ? picked : ids, logits ? picked_w : wts, k, E,
                                  K, v);
            cp_async_wait<0>();  // this thread's own chunks of the residual's copy
            add_resid_store(resid ? (const float*)(xs + 2 * K8) : nullptr,
                            blockIdx.x == 0 ? sum_out : nullptr, K, v);
            norm_store_to<RN_V>(v, K, eps, nw, nwdt,
                                [&](int c, F4 r) { xs[(c & 1) * K8 + (c >> 1)] = r; });
        });
}
