// Grouped MXFP4 MoE for few pairs per expert (batched decode: 16..~500 tokens a step, ~8-64
// pairs an expert), on f16 tensor cores with the roles swapped: the expert's weights are the
// mma's A (16 rows x 16 k, decoded from MXFP4 in registers) and the pairs' activations its B
// (16 k x 8 pairs), so each weight byte is read from memory once per tile of up to 64 pairs and
// a warp needs no shared-memory tiles of the weights beyond a small cp.async ring.
//
// k order. The product over k does not depend on the order of k, as long as A and B use the
// same one. A thread (g = lane / 4, t = lane % 4) holds, in both operands of m16n8k16, the k
// slots {2t, 2t+1, 2t+8, 2t+9}. For each 32-value MXFP4 group, thread t takes the group's codes
// 8t..8t+7: one u32 of the 16 code bytes (code 8t+i in bits 4i..4i+3). Decoding that u32 as
// f16 pairs (mx4_f16x2 below) yields {c3,c7}, {c2,c6}, {c1,c5}, {c0,c4}: the first k16 step
// takes {c3,c7} in slots 2t,2t+1 and {c2,c6} in 2t+8,2t+9, the second {c1,c5} and {c0,c4}.
// moe_skinny_stage writes the activations as f16 in that order ([x3,x7,x2,x6,x1,x5,x0,x4] for
// each 8 values), so one 16-byte load gives a thread its B fragments of both k16 steps.
//
// Scales. mx4_f16x2 gives the E2M1 value times 2^-14 (exact: an f16 with the code's exponent
// bits, subnormal for 0.5), so the two k16 products of a group are formed from zero and added
// to the f32 accumulators times 2^(s - 127 + 14) of their row.
//
// Numerics: activations rounded to f16 (round to nearest even) where the 64-pair-tile kernels
// of mma.cu round them to bf16; products and sums in f32.

#define SK_WARPS 4
#define SK_MT 2                         // m16 tiles a warp: 32 weight rows
#define SK_NT 8                         // n8 tiles: up to 64 pairs a tile (moe_route's BM)
#define SK_ROWS (SK_WARPS * 16 * SK_MT)  // weight rows a block
#define SK_STAGES 6                     // cp.async ring depth (groups in flight a warp)

// 8 E2M1 codes (a u32, code i in bits 4i..4i+3) as four f16x2 words: the top nibble of each
// 16-bit half, after shifting the word left by 4 j, becomes sign (bit 15) and exponent/mantissa
// bits (11..9) of an f16 = the code's value times 2^-14.
__device__ __forceinline__ u32 mx4_top_f16x2(u32 q) {
    return (q & 0x80008000u) | ((q >> 3) & 0x0e000e00u);
}

__device__ __forceinline__ void mma_f16_k16(float* c, const float* z, u32 a0, u32 a1, u32 a2,
                                            u32 a3, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%10,%11,%12,%13};"
        : "=f"(c[0]), "=f"(c[1]), "=f"(c[2]), "=f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1), "f"(z[0]), "f"(z[1]),
          "f"(z[2]), "f"(z[3]));
}

__device__ __forceinline__ u32 f16x2_of(float lo, float hi) {
    u32 r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// xs [pairs, K] f16 in the k order above: row pos = a row (list[pos] / a_div), f32 [*, K].
// grid (pairs), 128 threads; K % 32 == 0.
extern "C" __global__ void moe_skinny_stage(const float* a, int a_div, int K, const int* list,
                                            u16* xs) {
    const int pos = blockIdx.x;
    const float* src = a + (i64)(list[pos] / a_div) * K;
    W4* dst = (W4*)(xs + (i64)pos * K);
    for (int c = threadIdx.x; c < K / 8; c += blockDim.x) {
        F4 u = *(const F4*)(src + 8 * c), v = *(const F4*)(src + 8 * c + 4);
        // [x0..x7] -> {x3,x7}, {x2,x6}, {x1,x5}, {x0,x4}
        dst[c] = W4{f16x2_of(u.w, v.w), f16x2_of(u.z, v.z), f16x2_of(u.y, v.y), f16x2_of(u.x, v.x)};
    }
}

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
    u32 s;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(s) : "l"(smem));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(gmem));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N));
}

// 2^(s - 127) * 2^14 as f32 (E8M0: 0 is 2^-127, 255 NaN -> inf as mma_e8m0 in mma.cu).
__device__ __forceinline__ float sk_factor(u32 s) {
    float f = s == 0 ? __int_as_float(0x00400000) : __int_as_float((int)(s << 23));
    return s == 255 ? __int_as_float(0x7f800000) : f * 16384.0f;
}

// One warp: 32 rows [row0, row0 + 32) of expert e's weights [N, G groups, 16 bytes] (scales
// [N, G]) times the tile's pairs (xs rows start..end, at most 64). MODE 0 (gate_up, rows
// interleaved gate/up): out[p, row/2] = swiglu; MODE 1 (down): out[p, row] = acc + bias.
// grid (N / SK_ROWS rounded up, max_tiles), SK_WARPS warps; dynamic shared memory
// SK_WARPS * (SK_STAGES * 512 + 32 * G) bytes. N % 32 == 0, K % 32 == 0.
template <int MODE>
__device__ __forceinline__ void moe_skinny(const u16* xs, const int* list, const int* tiles,
                                           const int* ntiles, const u8* wb, const u8* ws,
                                           const void* bias, int bdt, float* out, int N, int K,
                                           float limit, float alpha) {
    extern __shared__ __align__(16) u8 sk_smem[];
    const int tile = blockIdx.y;
    if (tile >= *ntiles) return;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int row0 = blockIdx.x * SK_ROWS + warp * 16 * SK_MT;
    if (row0 >= N) return;  // whole warps: N % 32 == 0
    const int e = tiles[3 * tile], start = tiles[3 * tile + 1], end = tiles[3 * tile + 2];
    const int G = K / 32;
    const int nt = (end - start + 7) >> 3;
    u8* ring = sk_smem + warp * (SK_STAGES * 512);
    u8* scl = sk_smem + SK_WARPS * SK_STAGES * 512 + warp * 32 * G;
    // The warp's scales [32 rows][G], contiguous in memory.
    const u8* ws0 = ws + ((i64)e * N + row0) * G;
    for (int i = lane; i < 32 * G; i += 32) scl[i] = ws0[i];
    // Lane r copies row row0 + r's 16-byte group j into slot j % SK_STAGES.
    const u8* wrow = wb + ((i64)e * N + row0 + lane) * G * 16;
    auto issue = [&](int j) {
        if (j < G) cp_async16(ring + (j % SK_STAGES) * 512 + lane * 16, wrow + (i64)j * 16);
        cp_async_commit();
    };
#pragma unroll
    for (int j = 0; j < SK_STAGES - 1; j++) issue(j);
    // B rows: the thread's pair of n8 tile jn is start + 8 jn + g (the last pair again past
    // end: its columns are not stored).
    // (32-bit offsets: fewer registers than pointers; xs has pairs * K < 2^31 elements)
    const u16* xbase = xs + 8 * t;
    int xoff[SK_NT];
#pragma unroll
    for (int jn = 0; jn < SK_NT; jn++) xoff[jn] = min(start + 8 * jn + g, end - 1) * K;
    float acc[SK_MT][SK_NT][4];
#pragma unroll
    for (int i = 0; i < SK_MT; i++)
#pragma unroll
        for (int jn = 0; jn < SK_NT; jn++)
#pragma unroll
            for (int c = 0; c < 4; c++) acc[i][jn][c] = 0.0f;
    const float zero[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    W4 xb[SK_NT];
#pragma unroll
    for (int jn = 0; jn < SK_NT; jn++)
        if (jn < nt) xb[jn] = *(const W4*)(xbase + xoff[jn]);
    for (int j = 0; j < G; j++) {
        issue(j + SK_STAGES - 1);
        cp_async_wait<SK_STAGES - 1>();
        __syncwarp();  // the other lanes' copies of group j (and the scales) are visible
        const u8* slot = ring + (j % SK_STAGES) * 512;
        W4 xn[SK_NT];  // group j + 1's activations, loaded while group j is multiplied
#pragma unroll
        for (int jn = 0; jn < SK_NT; jn++)
            if (jn < nt && j + 1 < G) xn[jn] = *(const W4*)(xbase + xoff[jn] + 32 * (j + 1));
#pragma unroll
        for (int i = 0; i < SK_MT; i++) {
            const int r = 16 * i + g;
            const u32 q0 = *(const u32*)(slot + r * 16 + 4 * t);
            const u32 q1 = *(const u32*)(slot + (r + 8) * 16 + 4 * t);
            const float f0 = sk_factor(scl[r * G + j]), f1 = sk_factor(scl[(r + 8) * G + j]);
            // A fragments: k16 step 0 = {c3,c7} | {c2,c6}, step 1 = {c1,c5} | {c0,c4}.
            const u32 a00 = mx4_top_f16x2(q0), a01 = mx4_top_f16x2(q1);
            const u32 a02 = mx4_top_f16x2(q0 << 4), a03 = mx4_top_f16x2(q1 << 4);
            const u32 a10 = mx4_top_f16x2(q0 << 8), a11 = mx4_top_f16x2(q1 << 8);
            const u32 a12 = mx4_top_f16x2(q0 << 12), a13 = mx4_top_f16x2(q1 << 12);
#pragma unroll
            for (int jn = 0; jn < SK_NT; jn++) {
                if (jn >= nt) continue;
                float p[4];
                mma_f16_k16(p, zero, a00, a01, a02, a03, xb[jn].x, xb[jn].y);
                mma_f16_k16(p, p, a10, a11, a12, a13, xb[jn].z, xb[jn].w);
                acc[i][jn][0] = fmaf(p[0], f0, acc[i][jn][0]);
                acc[i][jn][1] = fmaf(p[1], f0, acc[i][jn][1]);
                acc[i][jn][2] = fmaf(p[2], f1, acc[i][jn][2]);
                acc[i][jn][3] = fmaf(p[3], f1, acc[i][jn][3]);
            }
        }
#pragma unroll
        for (int jn = 0; jn < SK_NT; jn++)
            if (jn < nt && j + 1 < G) xb[jn] = xn[jn];
        __syncwarp();  // slot j % SK_STAGES is refilled by the next iteration's issue
    }
    cp_async_wait<0>();
    // c0, c1: row g, pairs 2t, 2t+1 of the n8 tile; c2, c3: row g + 8.
#pragma unroll
    for (int i = 0; i < SK_MT; i++)
#pragma unroll
        for (int jn = 0; jn < SK_NT; jn++) {
            if (jn >= nt) continue;
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int row = row0 + 16 * i + g + 8 * h;
                float v0 = acc[i][jn][2 * h], v1 = acc[i][jn][2 * h + 1];
                if (MODE == 0) {
                    // gate rows are even, their up rows (row + 1) are in lane + 4.
                    float u0 = __shfl_down_sync(0xffffffffu, v0, 4);
                    float u1 = __shfl_down_sync(0xffffffffu, v1, 4);
                    if (g & 1) continue;
                    const float bg = ldf(bias, bdt, (i64)e * N + row);
                    const float bu = ldf(bias, bdt, (i64)e * N + row + 1);
                    const float gv[2] = {v0, v1}, uv[2] = {u0, u1};
#pragma unroll
                    for (int c = 0; c < 2; c++) {
                        const int pos = start + 8 * jn + 2 * t + c;
                        if (pos >= end) continue;
                        out[(i64)list[pos] * (N / 2) + row / 2] =
                            swiglu(gv[c] + bg, uv[c] + bu, limit, alpha);
                    }
                } else {
                    const float b = ldf(bias, bdt, (i64)e * N + row);
                    const float vv[2] = {v0, v1};
#pragma unroll
                    for (int c = 0; c < 2; c++) {
                        const int pos = start + 8 * jn + 2 * t + c;
                        if (pos < end) out[(i64)list[pos] * N + row] = vv[c] + b;
                    }
                }
            }
        }
}

extern "C" __global__ void __launch_bounds__(32 * SK_WARPS, 3)
    moe_skinny_gate_up(const u16* xs, const int* list, const int* tiles, const int* ntiles,
                       const u8* gub, const u8* gus, const void* gbias, int bdt, float* act,
                       int H, int I, float limit, float alpha) {
    moe_skinny<0>(xs, list, tiles, ntiles, gub, gus, gbias, bdt, act, 2 * I, H, limit, alpha);
}

extern "C" __global__ void __launch_bounds__(32 * SK_WARPS, 3)
    moe_skinny_down(const u16* xs, const int* list, const int* tiles, const int* ntiles,
                    const u8* dnb, const u8* dns, const void* dbias, int bdt, float* y, int H,
                    int I) {
    moe_skinny<1>(xs, list, tiles, ntiles, dnb, dns, dbias, bdt, y, H, I, 0.0f, 0.0f);
}
