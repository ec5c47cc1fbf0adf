// moe_mxfp4: mixture of MXFP4 experts with gpt-oss's clamped SwiGLU, decoded in the kernels.
// Blocks [E, rows, groups, 16] (two E2M1 codes a byte, low nibble first), scales [E, rows,
// groups] (E8M0). Three passes: gate_up + SwiGLU -> act [T*k, I]; down -> y [T*k, H];
// combine: out[t] = sum over the token's experts in ascending expert id of y * weight.

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
            report_error(err, ERR_EXPERT_ID, e, E, (int)t);
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
