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

__device__ __forceinline__ float swiglu(float gate, float up, float limit, float alpha) {
    gate = fminf(gate, limit);
    up = up < -limit ? -limit : (up > limit ? limit : up);
    float glu = gate * (1.0f / (1.0f + expf(-(gate * alpha))));
    return (up + 1.0f) * glu;
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
    int n = 0;
    for (int s = 0; s < K; s++) {
        int e = ids[t * K + s];
        if (e < 0 || e >= E) continue;
        int at = n;
        while (at > 0 && ids[t * K + order[at - 1]] > e) {
            order[at] = order[at - 1];
            at--;
        }
        order[at] = s;
        n++;
    }
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

template <int P>
__device__ __forceinline__ float fp4_raw(u32 w) {
    u32 em = P <= 22 ? (w << (22 - P)) : (w >> (P - 22));
    u32 sg = w << (28 - P);
    return __uint_as_float((em & 0x01c00000u) | (sg & 0x80000000u));
}

__device__ __forceinline__ float mx_fma8(u32 w, F4 a, F4 b, float acc) {
    acc = fmaf(fp4_raw<0>(w), a.x, acc);
    acc = fmaf(fp4_raw<4>(w), a.y, acc);
    acc = fmaf(fp4_raw<8>(w), a.z, acc);
    acc = fmaf(fp4_raw<12>(w), a.w, acc);
    acc = fmaf(fp4_raw<16>(w), b.x, acc);
    acc = fmaf(fp4_raw<20>(w), b.y, acc);
    acc = fmaf(fp4_raw<24>(w), b.z, acc);
    acc = fmaf(fp4_raw<28>(w), b.w, acc);
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

// R rows (row0 + r * rstride, r < R, each with G groups) dotted with the staged x; the sums
// over the warp are in acc[] of every lane.
template <int R>
__device__ __forceinline__ void mx_rows_dot(const u8* blocks, const u8* scales, i64 row0,
                                            i64 rstride, int nrows, const F4* xs, int G,
                                            int lane, float* acc) {
#pragma unroll
    for (int r = 0; r < R; r++) acc[r] = 0.0f;
    // Two groups per lane per step: 2R 16-byte loads in flight.
    for (int g0 = lane; g0 < G; g0 += 64) {
        W4 q[2][R];
        float sc[2][R];
#pragma unroll
        for (int h = 0; h < 2; h++) {
            int g = g0 + 32 * h;
#pragma unroll
            for (int r = 0; r < R; r++) {
                i64 row = row0 + r * rstride;
                if (r < nrows && g < G) {
                    q[h][r] = ldg16_stream(blocks + (row * G + g) * 16);
                    sc[h][r] = e8m0(scales[row * G + g]);
                } else {
                    q[h][r] = W4{0, 0, 0, 0};
                    sc[h][r] = 0.0f;
                }
            }
        }
#pragma unroll
        for (int h = 0; h < 2; h++) {
            int g = g0 + 32 * h;
            if (g >= G) break;
            float part[R];
#pragma unroll
            for (int r = 0; r < R; r++) part[r] = 0.0f;
            F4 a = xs[0 * G + g], b = xs[1 * G + g];
#pragma unroll
            for (int r = 0; r < R; r++) part[r] = mx_fma8(q[h][r].x, a, b, part[r]);
            a = xs[2 * G + g];
            b = xs[3 * G + g];
#pragma unroll
            for (int r = 0; r < R; r++) part[r] = mx_fma8(q[h][r].y, a, b, part[r]);
            a = xs[4 * G + g];
            b = xs[5 * G + g];
#pragma unroll
            for (int r = 0; r < R; r++) part[r] = mx_fma8(q[h][r].z, a, b, part[r]);
            a = xs[6 * G + g];
            b = xs[7 * G + g];
#pragma unroll
            for (int r = 0; r < R; r++) part[r] = mx_fma8(q[h][r].w, a, b, part[r]);
#pragma unroll
            for (int r = 0; r < R; r++)
                if (r < nrows) acc[r] += (part[r] * 0x1p62f) * sc[h][r];
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++) acc[r] = warp_sum(acc[r]);
}

#define GU_C 2  // SwiGLU outputs (gate/up row pairs) per warp

// grid (T*k, by); dynamic shared memory H floats. Warps stride over the I outputs.
extern "C" __global__ void moe_gate_up_fast(const float* x, const int* ids, const u8* gub,
                                            const u8* gus, const void* gbias, int bdt, float* act,
                                            int K, int E, int H, int I, float limit, float alpha,
                                            int* err) {
    extern __shared__ F4 xs[];
    i64 pair = blockIdx.x;
    i64 t = pair / K;
    int G = H / 32;
    int lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    int e = ids[pair];
    float* a = act + pair * I;
    i64 stride = (i64)gridDim.y * nw * GU_C;
    i64 c_first = ((i64)blockIdx.y * nw + (threadIdx.x >> 5)) * GU_C;
    if (e < 0 || e >= E) {
        if (threadIdx.x == 0 && blockIdx.y == 0 && e != -1)
            report_error(err, ERR_EXPERT_ID, e, E, (int)t);
        for (i64 c0 = c_first; c0 < I; c0 += stride)
            if (lane < GU_C && c0 + lane < I) a[c0 + lane] = 0.0f;
        return;
    }
    stage_mx_x(xs, x + t * H, G);
    __syncthreads();
    for (i64 c0 = c_first; c0 < I; c0 += stride) {
        int nc = I - c0 < GU_C ? (int)(I - c0) : GU_C;
        i64 row0 = (i64)e * 2 * I + 2 * c0;
        float acc[2 * GU_C];
        mx_rows_dot<2 * GU_C>(gub, gus, row0, 1, 2 * nc, xs, G, lane, acc);
        if (lane == 0) {
#pragma unroll
            for (int q = 0; q < GU_C; q++) {
                if (q < nc) {
                    float g = acc[2 * q] + ldf(gbias, bdt, row0 + 2 * q);
                    float u = acc[2 * q + 1] + ldf(gbias, bdt, row0 + 2 * q + 1);
                    a[c0 + q] = swiglu(g, u, limit, alpha);
                }
            }
        }
    }
}

#define DN_R 4  // down-projection rows per warp

// grid (T*k, by); dynamic shared memory I floats. y [T*k, H] = expert outputs (bias added).
extern "C" __global__ void moe_down_fast(const float* act, const int* ids, const u8* dnb,
                                         const u8* dns, const void* dbias, int bdt, float* y,
                                         int K, int E, int H, int I) {
    extern __shared__ F4 xs[];
    i64 pair = blockIdx.x;
    int G = I / 32;
    int lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    int e = ids[pair];
    i64 stride = (i64)gridDim.y * nw * DN_R;
    i64 r_first = ((i64)blockIdx.y * nw + (threadIdx.x >> 5)) * DN_R;
    if (e < 0 || e >= E) {
        for (i64 r0 = r_first; r0 < H; r0 += stride)
            if (lane < DN_R && r0 + lane < H) y[pair * H + r0 + lane] = 0.0f;
        return;
    }
    stage_mx_x(xs, act + pair * I, G);
    __syncthreads();
    for (i64 r0 = r_first; r0 < H; r0 += stride) {
        int nr = H - r0 < DN_R ? (int)(H - r0) : DN_R;
        i64 row0 = (i64)e * H + r0;
        float acc[DN_R];
        mx_rows_dot<DN_R>(dnb, dns, row0, 1, nr, xs, G, lane, acc);
        if (lane == 0) {
#pragma unroll
            for (int r = 0; r < DN_R; r++)
                if (r < nr) y[pair * H + r0 + r] = acc[r] + ldf(dbias, bdt, row0 + r);
        }
    }
}
