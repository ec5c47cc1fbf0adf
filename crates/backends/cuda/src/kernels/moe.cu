// moe_mxfp4: mixture of MXFP4 experts with gpt-oss's clamped SwiGLU, decoded in the kernels.
// Blocks [E, rows, groups, 16] (two E2M1 codes a byte, low nibble first), scales [E, rows,
// groups] (E8M0). Three passes: gate_up + SwiGLU -> act [T*k, I]; down -> y [T*k, H];
// combine: out[t] = sum over the token's experts in ascending expert id of y * weight.
// An id of -1 is an expert held by another shard (expert parallel): it contributes nothing.

struct alignas(16) U4 {
    u32 x, y, z, w;
};

__device__ __forceinline__ float fp4_val(u32 c) {
    u32 e = (c >> 1) & 3u, m = c & 1u;
    float mag = e == 0 ? 0.5f * (float)m
                       : __int_as_float((int)((e + 126u) << 23)) * (1.0f + 0.5f * (float)m);
    return (c & 8u) ? -mag : mag;
}

__device__ __forceinline__ float e8m0(u32 s) {
    if (s == 0) return __int_as_float(0x00400000);  // 2^-127, subnormal
    if (s == 255) return __int_as_float(0x7f800000);
    return __int_as_float((int)(s << 23));
}

// Dot product of one MXFP4 row (groups blocks) with x[groups * 32], summed over the warp.
__device__ __forceinline__ float mx_row_dot(const u8* blocks, const u8* scales, const float* x,
                                            int groups, int lane) {
    float s = 0.0f;
    for (int g = lane; g < groups; g += 32) {
        U4 q = *(const U4*)(blocks + (i64)g * 16);
        u32 words[4] = {q.x, q.y, q.z, q.w};
        const float* xg = x + g * 32;
        float part = 0.0f;
#pragma unroll
        for (int wi = 0; wi < 4; wi++) {
#pragma unroll
            for (int b = 0; b < 4; b++) {
                u32 byte = (words[wi] >> (8 * b)) & 0xffu;
                int j = wi * 4 + b;
                part += fp4_val(byte & 15u) * xg[2 * j];
                part += fp4_val(byte >> 4) * xg[2 * j + 1];
            }
        }
        s += part * e8m0(scales[g]);
    }
    return warp_sum(s);
}

// grid (T*k, ceil(I / warps)); warp c computes gate row 2c and up row 2c+1 of its expert.
extern "C" __global__ void moe_gate_up(const float* x, const int* ids, const u8* gub,
                                       const u8* gus, const void* gbias, int bdt, float* act,
                                       int K, int E, int H, int I, float limit, float alpha,
                                       int* err) {
    i64 pair = blockIdx.x;
    i64 t = pair / K;
    int lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    int c = blockIdx.y * nw + (threadIdx.x >> 5);
    if (c >= I) return;
    int e = ids[pair];
    float* a = act + pair * I;
    if (e < 0 || e >= E) {
        if (lane == 0) {
            if (e != -1) report_error(err, ERR_EXPERT_ID, e, E, (int)t);
            a[c] = 0.0f;
        }
        return;
    }
    int groups = H / 32;
    i64 rg = (i64)e * 2 * I + 2 * c;
    const float* xr = x + t * H;
    float g = mx_row_dot(gub + rg * groups * 16, gus + rg * groups, xr, groups, lane);
    float u = mx_row_dot(gub + (rg + 1) * groups * 16, gus + (rg + 1) * groups, xr, groups, lane);
    if (lane == 0) {
        g += ldf(gbias, bdt, rg);
        u += ldf(gbias, bdt, rg + 1);
        a[c] = swiglu(g, u, limit, alpha);
    }
}

// grid (T*k, ceil(H / warps)); warp r computes output row r of the down projection.
extern "C" __global__ void moe_down(const float* act, const int* ids, const u8* dnb,
                                    const u8* dns, const void* dbias, int bdt, float* y, int K,
                                    int E, int H, int I) {
    i64 pair = blockIdx.x;
    int lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    int r = blockIdx.y * nw + (threadIdx.x >> 5);
    if (r >= H) return;
    int e = ids[pair];
    if (e < 0 || e >= E) {
        if (lane == 0) y[pair * H + r] = 0.0f;
        return;
    }
    int groups = I / 32;
    i64 row = (i64)e * H + r;
    float s = mx_row_dot(dnb + row * groups * 16, dns + row * groups, act + pair * I, groups, lane);
    if (lane == 0) y[pair * H + r] = s + ldf(dbias, bdt, row);
}

// grid T; out[t] = sum of y[t, slot] * w[t, slot] over slots in ascending (expert id, slot).
extern "C" __global__ void moe_combine(const float* y, const int* ids, const float* w, float* out,
                                       int K, int E, int H) {
    i64 t = blockIdx.x;
    int order[32];
    const int n = experts_in_order(ids + t * K, K, E, order);
    for (int c = threadIdx.x; c < H; c += blockDim.x) {
        float acc = 0.0f;
        for (int i = 0; i < n; i++) {
            i64 pair = t * K + order[i];
            acc += y[pair * H + c] * w[pair];
        }
        out[t * H + c] = acc;
    }
}

// ---- Fast path (small T): 16-byte weight loads, the token's activations staged in shared
// memory as float4 chunks laid out [chunk 0..7][group] (conflict-free) and pre-scaled by 2^64,
// E2M1 decoded by bit placement: code em -> float bits em << 22 is the value times 2^-126
// (exact, the denormal included), so v * x = (bits * (x * 2^64)) * 2^62 with one FMA.

// Nibbles P/4 and P/4 + 4 of w decoded together as a pair of bf16 bit patterns: their codes
// e1 e0 m at bits 6..8 and 22..24, their signs at bits 15 and 31 (two shifts and two logic ops
// for two weights); each half widened to f32 bits is the em << 22 form above.
template <int P>
__device__ __forceinline__ u32 fp4_pair(u32 w) {
    u32 em = P <= 6 ? (w << (6 - P)) : (w >> (P - 6));
    u32 sg = w << (12 - P);
    return (em & 0x01c001c0u) | (sg & 0x80008000u);
}

__device__ __forceinline__ float mx_fma8(u32 w, F4 a, F4 b, float acc) {
    const u32 p0 = fp4_pair<0>(w), p1 = fp4_pair<4>(w), p2 = fp4_pair<8>(w),
              p3 = fp4_pair<12>(w);
    acc = fmaf(__uint_as_float(p0 << 16), a.x, acc);
    acc = fmaf(__uint_as_float(p1 << 16), a.y, acc);
    acc = fmaf(__uint_as_float(p2 << 16), a.z, acc);
    acc = fmaf(__uint_as_float(p3 << 16), a.w, acc);
    acc = fmaf(__uint_as_float(p0 & 0xffff0000u), b.x, acc);
    acc = fmaf(__uint_as_float(p1 & 0xffff0000u), b.y, acc);
    acc = fmaf(__uint_as_float(p2 & 0xffff0000u), b.z, acc);
    acc = fmaf(__uint_as_float(p3 & 0xffff0000u), b.w, acc);
    return acc;
}

// xs[c * G + g] = 2^64 * x[32 g + 4 c .. 32 g + 4 c + 3]
__device__ __forceinline__ void stage_mx_x(F4* xs, const float* x, int G) {
    for (int i = threadIdx.x; i < 8 * G; i += blockDim.x) {
        int c = i / G, g = i - c * G;
        F4 v = *(const F4*)(x + 32 * g + 4 * c);
        const float s = 0x1p64f;
        v.x *= s;
        v.y *= s;
        v.z *= s;
        v.w *= s;
        xs[i] = v;
    }
}

#define MX_GS 3   // groups per lane per trip: rows of up to 96 groups (H <= 3072) in one trip

// A warp's set is S consecutive rows (row0.., nrows of them valid, G groups each). A
// trip covers groups g0 + 32 h (h < MX_GS) of every row: all its 16-byte loads are issued
// before any is used, and the first trip's before the block stages x (they do not need it).
template <int S>
__device__ __forceinline__ void mx_rows_load(const u8* blocks, const u8* scales, i64 row0,
                                             int nrows, int G, int g0, W4 (*q)[S],
                                             float (*sc)[S]) {
#pragma unroll
    for (int h = 0; h < MX_GS; h++) {
        const int g = g0 + 32 * h;
#pragma unroll
        for (int r = 0; r < S; r++) {
            const i64 at = (row0 + r) * G + g;
            if (r < nrows && g < G) {
                q[h][r] = ldg16_stream(blocks + at * 16);
                sc[h][r] = e8m0(scales[at]);
            } else {
                q[h][r] = W4{0, 0, 0, 0};
                sc[h][r] = 0.0f;
            }
        }
    }
}

// One trip's groups dotted with the staged x (each x chunk read once for all the rows).
template <int S>
__device__ __forceinline__ void mx_rows_fma(W4 (*q)[S], float (*sc)[S], int G, int g0,
                                            const F4* xs, float* acc) {
#pragma unroll
    for (int h = 0; h < MX_GS; h++) {
        const int g = g0 + 32 * h;
        if (g >= G) break;
        float part[S];
#pragma unroll
        for (int r = 0; r < S; r++) part[r] = 0.0f;
#pragma unroll
        for (int wi = 0; wi < 4; wi++) {
            const F4 a = xs[(2 * wi) * G + g], b = xs[(2 * wi + 1) * G + g];
#pragma unroll
            for (int r = 0; r < S; r++) {
                const u32 w = wi == 0 ? q[h][r].x : wi == 1 ? q[h][r].y : wi == 2 ? q[h][r].z : q[h][r].w;
                part[r] = mx_fma8(w, a, b, part[r]);
            }
        }
#pragma unroll
        for (int r = 0; r < S; r++) acc[r] += (part[r] * 0x1p62f) * sc[h][r];
    }
}

// The set's row dot products with the staged x, summed over the warp into acc[] of every
// lane. `have`: the first trip's loads are already in q/sc.
template <int S>
__device__ __forceinline__ void mx_set_dot(const u8* blocks, const u8* scales, i64 row0,
                                           int nrows, const F4* xs, int G, int lane, bool have,
                                           W4 (*q)[S], float (*sc)[S], float* acc) {
#pragma unroll
    for (int r = 0; r < S; r++) acc[r] = 0.0f;
    for (int g0 = lane; g0 < G; g0 += 32 * MX_GS) {
        if (!have) mx_rows_load<S>(blocks, scales, row0, nrows, G, g0, q, sc);
        have = false;
        mx_rows_fma<S>(q, sc, G, g0, xs, acc);
    }
#pragma unroll
    for (int r = 0; r < S; r++) acc[r] = warp_sum(acc[r]);
}

// A warp's sets s, s + stride, ... (< nsets) of one expert matrix: row_of(s, nr) gives set
// s's first row and its valid rows nr, done(s, row0, nr, acc) takes the set's sums (every
// lane). The block stages x (G groups, all threads) after the warp's first loads are issued.
template <int S, class RowOf, class Done>
__device__ __forceinline__ void run_sets(const u8* blocks, const u8* scales, int G, i64 s,
                                         i64 nsets, i64 stride, const float* x, F4* xs,
                                         RowOf row_of, Done done) {
    const int lane = threadIdx.x & 31;
    W4 q[MX_GS][S];
    float sc[MX_GS][S];
    bool have = false;
    if (s < nsets) {
        int nr;
        const i64 r0 = row_of(s, nr);
        mx_rows_load<S>(blocks, scales, r0, nr, G, lane, q, sc);
        have = true;
    }
    stage_mx_x(xs, x, G);
    __syncthreads();
    for (; s < nsets; s += stride) {
        int nr;
        const i64 r0 = row_of(s, nr);
        float acc[S];
        mx_set_dot<S>(blocks, scales, r0, nr, xs, G, lane, have, q, sc, acc);
        have = false;
        done(s, r0, nr, acc);
    }
}

// grid (T*k, by), 256 threads; dynamic shared memory H floats. Each warp computes sets of
// S / 2 SwiGLU outputs (their gate/up rows are adjacent), grid-stride over the sets.
template <int S>
__device__ __forceinline__ void gate_up_sets(const float* x, const int* ids, const u8* gub,
                                             const u8* gus, const void* gbias, int bdt,
                                             float* act, int K, int E, int H, int I, float limit,
                                             float alpha, int* err, F4* xs) {
    const int OUTS = S / 2;
    const i64 pair = blockIdx.x;
    const i64 t = pair / K;
    const int G = H / 32;
    const int lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    const int e = ids[pair];
    float* a = act + pair * I;
    const i64 nsets = (I + OUTS - 1) / OUTS;
    const i64 stride = (i64)gridDim.y * nw;
    i64 s = (i64)blockIdx.y * nw + (threadIdx.x >> 5);
    if (e < 0 || e >= E) {
        if (threadIdx.x == 0 && blockIdx.y == 0 && e != -1)
            report_error(err, ERR_EXPERT_ID, e, E, (int)t);
        for (; s < nsets; s += stride)
            if (lane < OUTS && s * OUTS + lane < I) a[s * OUTS + lane] = 0.0f;
        return;
    }
    const i64 base = (i64)e * 2 * I;
    auto row_of = [&](i64 set, int& nr) -> i64 {
        const i64 c0 = set * OUTS;
        nr = 2 * (I - c0 < OUTS ? (int)(I - c0) : OUTS);
        return base + 2 * c0;
    };
    auto done = [&](i64 set, i64 row0, int nr, const float* acc) {
        if (lane == 0) {
#pragma unroll
            for (int o = 0; o < OUTS; o++) {
                if (2 * o < nr) {
                    float g = acc[2 * o] + ldf(gbias, bdt, row0 + 2 * o);
                    float u = acc[2 * o + 1] + ldf(gbias, bdt, row0 + 2 * o + 1);
                    a[set * OUTS + o] = swiglu(g, u, limit, alpha);
                }
            }
        }
    };
    run_sets<S>(gub, gus, G, s, nsets, stride, x + t * H, xs, row_of, done);
}

// grid (T*k, by), 256 threads; dynamic shared memory I floats. y [T*k, H] = expert outputs
// (bias added); each warp computes sets of S rows, grid-stride over the sets.
template <int S>
__device__ __forceinline__ void down_sets(const float* act, const int* ids, const u8* dnb,
                                          const u8* dns, const void* dbias, int bdt, float* y,
                                          int K, int E, int H, int I, F4* xs) {
    const i64 pair = blockIdx.x;
    const int G = I / 32;
    const int lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    const int e = ids[pair];
    const i64 nsets = (H + S - 1) / S;
    const i64 stride = (i64)gridDim.y * nw;
    i64 s = (i64)blockIdx.y * nw + (threadIdx.x >> 5);
    if (e < 0 || e >= E) {
        for (; s < nsets; s += stride)
            if (lane < S && s * S + lane < H) y[pair * H + s * S + lane] = 0.0f;
        return;
    }
    const i64 base = (i64)e * H;
    auto row_of = [&](i64 set, int& nr) -> i64 {
        const i64 r0 = set * S;
        nr = H - r0 < S ? (int)(H - r0) : S;
        return base + r0;
    };
    auto done = [&](i64 set, i64 row0, int nr, const float* acc) {
        if (lane == 0) {
#pragma unroll
            for (int r = 0; r < S; r++)
                if (r < nr) y[pair * H + set * S + r] = acc[r] + ldf(dbias, bdt, row0 + r);
        }
    };
    run_sets<S>(dnb, dns, G, s, nsets, stride, act + pair * I, xs, row_of, done);
}

// The kernels: S = 2 rows a warp held to 64 registers a thread, so that 4 blocks fit an SM
// (the default: 20b decode on an H100 327 tok/s against 316 with S = 4, and a pipelined S = 2
// variant, each warp loading its next set while computing one, 311); S = 4 (2 SwiGLU outputs a
// warp, 126 registers) with GPTOSS_CUDA_MOE_ROWS=4.
#define GATE_UP_ARGS                                                                         \
    const float *x, const int *ids, const u8 *gub, const u8 *gus, const void *gbias, int bdt, \
        float *act, int K, int E, int H, int I, float limit, float alpha, int *err
#define GATE_UP_PASS x, ids, gub, gus, gbias, bdt, act, K, E, H, I, limit, alpha, err, xs
#define DOWN_ARGS                                                                             \
    const float *act, const int *ids, const u8 *dnb, const u8 *dns, const void *dbias, int bdt, \
        float *y, int K, int E, int H, int I
#define DOWN_PASS act, ids, dnb, dns, dbias, bdt, y, K, E, H, I, xs

// grid (T*k, by), 256 threads; dynamic shared memory H floats (gate_up), I floats (down).
extern "C" __global__ void __launch_bounds__(256) moe_gate_up_fast(GATE_UP_ARGS) {
    extern __shared__ F4 xs[];
    gate_up_sets<4>(GATE_UP_PASS);
}
extern "C" __global__ void __launch_bounds__(256) moe_down_fast(DOWN_ARGS) {
    extern __shared__ F4 xs[];
    down_sets<4>(DOWN_PASS);
}
extern "C" __global__ void __launch_bounds__(256, 4) moe_gate_up_fast2(GATE_UP_ARGS) {
    extern __shared__ F4 xs[];
    gate_up_sets<2>(GATE_UP_PASS);
}
extern "C" __global__ void __launch_bounds__(256, 4) moe_down_fast2(DOWN_ARGS) {
    extern __shared__ F4 xs[];
    down_sets<2>(DOWN_PASS);
}

// ---- --dequantize, few tokens: experts expanded to bf16 at load ([E, rows, K] bf16). One warp
// an output row (gate_up: its gate and up rows, then SwiGLU), all of a row's 16-byte loads
// issued at once (rows of K <= 3072 in one trip); the pair's x staged in shared memory as two
// float4 planes (x[8j..8j+3] at j, x[8j+4..8j+7] at K/8 + j). f32 accumulation.
#define BF_U 12

__device__ __forceinline__ void stage_planes(F4* xs, const float* x, int K8) {
    for (int j = threadIdx.x; j < K8; j += blockDim.x) {
        xs[j] = *(const F4*)(x + 8 * j);
        xs[K8 + j] = *(const F4*)(x + 8 * j + 4);
    }
}

// The dot product of one bf16 row (K8 chunks of 8) with the staged x, summed over the warp.
__device__ __forceinline__ float row_dot_bf16(const W4* wr, const F4* xs, int K8, int lane) {
    float acc = 0.0f;
    for (int j0 = lane; j0 < K8; j0 += 32 * BF_U) {
        W4 q[BF_U];
#pragma unroll
        for (int u = 0; u < BF_U; u++)
            q[u] = j0 + 32 * u < K8 ? ldg16_stream(wr + j0 + 32 * u) : W4{0, 0, 0, 0};
#pragma unroll
        for (int u = 0; u < BF_U; u++) {
            const int j = j0 + 32 * u;
            if (j < K8) acc = dot8_bf16(q[u], xs[j], xs[K8 + j], acc);
        }
    }
    return warp_sum(acc);
}

// grid (T*k, ceil(I / warps)); dynamic shared memory H floats. w [E, 2I, H] bf16; the
// scales argument is unused (same arguments as moe_gate_up_fast).
extern "C" __global__ void __launch_bounds__(256)
    moe_gate_up_bf16(const float* x, const int* ids, const u16* w, const u8* no_scales,
                     const void* gbias, int bdt, float* act, int K, int E, int H, int I,
                     float limit, float alpha, int* err) {
    extern __shared__ F4 xs[];
    const i64 pair = blockIdx.x;
    const i64 t = pair / K;
    const int lane = threadIdx.x & 31;
    const int c = blockIdx.y * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int e = ids[pair];
    float* a = act + pair * I;
    if (e < 0 || e >= E) {
        if (threadIdx.x == 0 && blockIdx.y == 0 && e != -1)
            report_error(err, ERR_EXPERT_ID, e, E, (int)t);
        if (lane == 0 && c < I) a[c] = 0.0f;
        return;
    }
    const int K8 = H / 8;
    stage_planes(xs, x + t * H, K8);
    __syncthreads();
    if (c >= I) return;
    const i64 row = (i64)e * 2 * I + 2 * c;
    const float g = row_dot_bf16((const W4*)(w + row * H), xs, K8, lane);
    const float u = row_dot_bf16((const W4*)(w + (row + 1) * H), xs, K8, lane);
    if (lane == 0)
        a[c] = swiglu(g + ldf(gbias, bdt, row), u + ldf(gbias, bdt, row + 1), limit, alpha);
}

// grid (T*k, ceil(H / warps)); dynamic shared memory I floats. w [E, H, I] bf16; the scales
// argument is unused (same arguments as moe_down_fast).
extern "C" __global__ void __launch_bounds__(256)
    moe_down_bf16(const float* act, const int* ids, const u16* w, const u8* no_scales,
                  const void* dbias, int bdt, float* y, int K, int E, int H, int I) {
    extern __shared__ F4 xs[];
    const i64 pair = blockIdx.x;
    const int lane = threadIdx.x & 31;
    const int r = blockIdx.y * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int e = ids[pair];
    if (e < 0 || e >= E) {
        if (lane == 0 && r < H) y[pair * H + r] = 0.0f;
        return;
    }
    const int K8 = I / 8;
    stage_planes(xs, act + pair * I, K8);
    __syncthreads();
    if (r >= H) return;
    const i64 row = (i64)e * H + r;
    const float s = row_dot_bf16((const W4*)(w + row * I), xs, K8, lane);
    if (lane == 0) y[pair * H + r] = s + ldf(dbias, bdt, row);
}

