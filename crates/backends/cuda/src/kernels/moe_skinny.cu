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
// sm_89+ (MX_E4M3 below) decode through E4M3 instead, which yields {c0,c2}, {c4,c6} (step 0)
// and {c1,c3}, {c5,c7} (step 1); sk_stage_row then writes [x0,x2,x4,x6,x1,x3,x5,x7].
//
// Scales. mx4_f16x2 gives the E2M1 value times 2^-14 (exact: an f16 with the code's exponent
// bits, subnormal for 0.5), so the two k16 products of a group are formed from zero and added
// to the f32 accumulators times 2^(s - 127 + 14) of their row.
//
// Numerics: activations rounded to f16 (round to nearest even) where the 64-pair-tile kernels
// of mma.cu round them to bf16; products and sums in f32.

#define SK_WARPS 4
#define SK_MT 2                         // m16 tiles a warp: 32 weight rows
#define SK_NT 8                         // n8 tiles: up to 64 pairs a tile (moe_route's BM);
                                        // the `4` kernels take 32 (fewer registers)
#define SK_ROWS (SK_WARPS * 16 * SK_MT)  // weight rows a block
#define SK_STAGES 6                     // cp.async ring depth (groups in flight a warp)
#define SK_SLOT 640                     // a ring slot: 32 rows x 16 code bytes + 32 scale words
#define SK_RING (SK_STAGES * SK_SLOT)   // bytes of a warp's ring

// 8 E2M1 codes (a u32, code i in bits 4i..4i+3) as four f16x2 words: the top nibble of each
// 16-bit half, after shifting the word left by 4 j, becomes sign (bit 15) and exponent/mantissa
// bits (11..9) of an f16 = the code's value times 2^-14.
__device__ __forceinline__ u32 mx4_top_f16x2(u32 q) {
    return (q & 0x80008000u) | ((q & 0x70007000u) >> 3);
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

// A row of K f32 values as f16 in the k order above ([x0..x7] -> {x3,x7}, {x2,x6}, {x1,x5},
// {x0,x4}), by the block's threads.
__device__ __forceinline__ void sk_stage_row(const float* src, int K, W4* dst) {
    for (int c = threadIdx.x; c < K / 8; c += blockDim.x) {
        const F4 u = *(const F4*)(src + 8 * c), v = *(const F4*)(src + 8 * c + 4);
#if __CUDA_ARCH__ >= 890  // MX_E4M3's order (below): {x0,x2}, {x4,x6}, {x1,x3}, {x5,x7}
        dst[c] = W4{f16x2_of(u.x, u.z), f16x2_of(v.x, v.z), f16x2_of(u.y, u.w), f16x2_of(v.y, v.w)};
#else
        dst[c] = W4{f16x2_of(u.w, v.w), f16x2_of(u.z, v.z), f16x2_of(u.y, v.y), f16x2_of(u.x, v.x)};
#endif
    }
}

// xs [pairs, K] f16 in the k order above: row pos = a row (list[pos] / a_div), f32 [*, K].
// grid (pairs), 128 threads; K % 32 == 0.
extern "C" __global__ void moe_skinny_stage(const float* a, int a_div, int K, const int* list,
                                            u16* xs) {
    const int pos = blockIdx.x;
    const float* src = a + (i64)(list[pos] / a_div) * K;
    W4* dst = (W4*)(xs + (i64)pos * K);
    sk_stage_row(src, K, dst);
}

// 2^(s - 127) * 2^14 as f32: the exponent field s + 14 (exact for every s up to 240, E8M0's
// 0 included); larger scales, and 255 (NaN), give inf as mma_e8m0 in mma.cu does for 255.
__device__ __forceinline__ float sk_factor(u32 s) {
    return __int_as_float((int)((min(s, 241u) + 14u) << 23));
}

// sm_89+ decode the codes through E4M3 (cvt.rn.f16x2.e4m3x2 is one instruction a pair): an
// E2M1 code's sign to bit 7 and exponent/mantissa bits to 4..2 is the E4M3 byte of its value
// times 2^-6 (0.5 subnormal in both), a word's 8 codes in 7 integer ops and 4 conversions
// (mx4_top_f16x2: 15 integer ops). The f16 pairs are then {c0,c2}, {c4,c6} (low nibbles) and
// {c1,c3}, {c5,c7} (high), so the row is staged in that order (sk_stage_row).
#if __CUDA_ARCH__ >= 890
#define MX_E4M3 1
#else
#define MX_E4M3 0
#endif

#if MX_E4M3
// The f16 pairs of a thread's 4 code bytes: lo = {c0,c2}, {c4,c6}; hi = {c1,c3}, {c5,c7}.
__device__ __forceinline__ void mx4_e4m3_f16x2(u32 q, u32* lo, u32* hi) {
    const u32 l8 = ((q << 4) & 0x80808080u) | ((q << 2) & 0x1c1c1c1cu);
    const u32 h8 = (q & 0x80808080u) | ((q >> 2) & 0x1c1c1c1cu);
    // Both 16-bit halves of a word through one mov (the upper one without a shift).
#define MX_CVT2(w, out)                                                                       \
    asm("{.reg .b16 a, b;\n mov.b32 {a, b}, %2;\n cvt.rn.f16x2.e4m3x2 %0, a;\n "            \
        "cvt.rn.f16x2.e4m3x2 %1, b;}"                                                         \
        : "=r"(out[0]), "=r"(out[1])                                                          \
        : "r"(w))
    MX_CVT2(l8, lo);
    MX_CVT2(h8, hi);
#undef MX_CVT2
}
#endif

// 2^(s - 127) times the decode's 2^14 (f16 bit placement) or 2^6 (through E4M3) as f32:
// exact up to s = 240 (resp. 248), inf above, as sk_factor.
__device__ __forceinline__ float mx_factor(u32 s) {
#if MX_E4M3
    return __int_as_float((int)((min(s, 249u) + 6u) << 23));
#else
    return sk_factor(s);
#endif
}

// Byte b (0..3) of w.
__device__ __forceinline__ u32 sk_byte(u32 w, int b) { return __byte_perm(w, 0u, 0x4440u | b); }

// A warp's 32 weight rows times up to NT n8 tiles of pairs over the groups [j0, j1): each
// lane copies its row's 16-byte groups, and the aligned word holding the group's scale byte,
// through the warp's cp.async ring (`wrow`/`srow`: the lane's row of codes [G][16] and of
// scales [G]); load_b(jn, j) gives the thread's B fragments (W4, see the k order above) of
// tile jn and group j, loaded one group ahead.
// `prep()` runs once the first groups are in flight, before any load_b (block-wide work such
// as staging B in shared memory).
template <int NT, class LoadB, class Prep>
__device__ __forceinline__ void sk_rows(float (*acc)[NT][4], u8* ring, const u8* wrow,
                                        const u8* srow, int j0, int j1, int nt, LoadB load_b,
                                        Prep prep) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    // Group j goes to slot (j - j0) mod SK_STAGES; `rs` is the slot read this iteration.
    auto issue = [&](int j, int slot_index) {
        if (j < j1) {
            u8* slot = ring + slot_index * SK_SLOT;
            cp_async<16>(slot + lane * 16, wrow + (i64)j * 16);
            cp_async<4>(slot + 512 + lane * 4, (const void*)((size_t)(srow + j) & ~(size_t)3));
        }
        cp_async_commit();
    };
#pragma unroll
    for (int s = 0; s < SK_STAGES - 1; s++) issue(j0 + s, s);
    int rs = 0;
    prep();
    // Where row r's scale byte sits in its word: (address of group j0) + (j - j0), mod 4.
    int sb[SK_MT][2];
#pragma unroll
    for (int i = 0; i < SK_MT; i++)
#pragma unroll
        for (int h = 0; h < 2; h++)
            sb[i][h] = __shfl_sync(0xffffffffu, (int)((size_t)(srow + j0) & 3), 16 * i + g + 8 * h);
#pragma unroll
    for (int i = 0; i < SK_MT; i++)
#pragma unroll
        for (int jn = 0; jn < NT; jn++)
#pragma unroll
            for (int c = 0; c < 4; c++) acc[i][jn][c] = 0.0f;
    const float zero[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    W4 xb[NT];
#pragma unroll
    for (int jn = 0; jn < NT; jn++)
        if (jn < nt && j0 < j1) xb[jn] = load_b(jn, j0);
    for (int j = j0; j < j1; j++) {
        issue(j + SK_STAGES - 1, rs == 0 ? SK_STAGES - 1 : rs - 1);
        cp_async_wait<SK_STAGES - 1>();
        __syncwarp();  // the other lanes' copies of group j (and the scales) are visible
        const u8* slot = ring + rs * SK_SLOT;
        rs = rs == SK_STAGES - 1 ? 0 : rs + 1;
        const u32* sw = (const u32*)(slot + 512);
        W4 xn[NT];  // group j + 1's activations, loaded while group j is multiplied
#pragma unroll
        for (int jn = 0; jn < NT; jn++)
            if (jn < nt && j + 1 < j1) xn[jn] = load_b(jn, j + 1);
#pragma unroll
        for (int i = 0; i < SK_MT; i++) {
            const int r = 16 * i + g;
            const u32 q0 = *(const u32*)(slot + r * 16 + 4 * t);
            const u32 q1 = *(const u32*)(slot + (r + 8) * 16 + 4 * t);
            const float f0 = mx_factor(sk_byte(sw[r], (sb[i][0] + j - j0) & 3));
            const float f1 = mx_factor(sk_byte(sw[r + 8], (sb[i][1] + j - j0) & 3));
#if MX_E4M3
            // A fragments: k16 step 0 = {c0,c2} | {c4,c6}, step 1 = {c1,c3} | {c5,c7}.
            u32 l0[2], h0[2], l1[2], h1[2];
            mx4_e4m3_f16x2(q0, l0, h0);
            mx4_e4m3_f16x2(q1, l1, h1);
            const u32 a00 = l0[0], a01 = l1[0], a02 = l0[1], a03 = l1[1];
            const u32 a10 = h0[0], a11 = h1[0], a12 = h0[1], a13 = h1[1];
#else
            // A fragments: k16 step 0 = {c3,c7} | {c2,c6}, step 1 = {c1,c5} | {c0,c4}.
            const u32 a00 = mx4_top_f16x2(q0), a01 = mx4_top_f16x2(q1);
            const u32 a02 = mx4_top_f16x2(q0 << 4), a03 = mx4_top_f16x2(q1 << 4);
            const u32 a10 = mx4_top_f16x2(q0 << 8), a11 = mx4_top_f16x2(q1 << 8);
            const u32 a12 = mx4_top_f16x2(q0 << 12), a13 = mx4_top_f16x2(q1 << 12);
#endif
#pragma unroll
            for (int jn = 0; jn < NT; jn++) {
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
        for (int jn = 0; jn < NT; jn++)
            if (jn < nt && j + 1 < j1) xb[jn] = xn[jn];
        __syncwarp();  // this slot is refilled by the next iteration's issue
    }
    cp_async_wait<0>();
}

// Stores a warp's results: acc c0, c1 are row g, pairs 2t, 2t+1 of n8 tile jn; c2, c3 row
// g + 8. Pair column n (0..8 NT) exists when n < cnt and goes to output row out_row(n).
// MODE 0 (gate_up, rows interleaved gate/up): out[row(n), row/2] = swiglu(gate, up) (the up
// row, row + 1, is in lane + 4); MODE 1: out[row(n), row] = acc + bias.
template <int MODE, int NT, class OutRow>
__device__ __forceinline__ void sk_store(float (*acc)[NT][4], int row0, int e, int N, int cnt,
                                         const void* bias, int bdt, float* out, float limit,
                                         float alpha, OutRow out_row) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int i = 0; i < SK_MT; i++)
#pragma unroll
        for (int jn = 0; jn < NT; jn++) {
            if (8 * jn >= cnt) continue;
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int row = row0 + 16 * i + g + 8 * h;
                const float v[2] = {acc[i][jn][2 * h], acc[i][jn][2 * h + 1]};
                if (MODE == 0) {
                    const float u[2] = {__shfl_down_sync(0xffffffffu, v[0], 4),
                                        __shfl_down_sync(0xffffffffu, v[1], 4)};
                    if (g & 1) continue;
                    const float bg = ldf(bias, bdt, (i64)e * N + row);
                    const float bu = ldf(bias, bdt, (i64)e * N + row + 1);
#pragma unroll
                    for (int c = 0; c < 2; c++) {
                        const int n = 8 * jn + 2 * t + c;
                        if (n < cnt)
                            out[(i64)out_row(n) * (N / 2) + row / 2] =
                                swiglu(v[c] + bg, u[c] + bu, limit, alpha);
                    }
                } else {
                    const float b = ldf(bias, bdt, (i64)e * N + row);
#pragma unroll
                    for (int c = 0; c < 2; c++) {
                        const int n = 8 * jn + 2 * t + c;
                        if (n < cnt) out[(i64)out_row(n) * N + row] = v[c] + b;
                    }
                }
            }
        }
}

// Tiles of up to 64 pairs (moe_route): one warp 32 rows [row0, row0 + 32) of expert e's
// weights [N, G groups, 16 bytes] (scales [N, G]) times the tile's staged rows xs[start..end).
// grid (N / SK_ROWS rounded up, max_tiles), SK_WARPS warps; dynamic shared memory
// SK_WARPS * SK_RING bytes. N % 32 == 0, K % 32 == 0.
template <int MODE, int NT>
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
    u8* ring = sk_smem + warp * SK_RING;
    // B rows: the thread's pair of n8 tile jn is start + 8 jn + g (the last pair again past
    // end: its columns are not stored). 32-bit offsets: fewer registers than pointers (xs has
    // pairs * K < 2^31 elements).
    const u16* xbase = xs + 8 * t;
    int xoff[NT];
#pragma unroll
    for (int jn = 0; jn < NT; jn++) xoff[jn] = min(start + 8 * jn + g, end - 1) * K;
    auto load_b = [&](int jn, int j) { return *(const W4*)(xbase + xoff[jn] + 32 * j); };
    float acc[SK_MT][NT][4];
    const i64 row = (i64)e * N + row0 + lane;
    sk_rows<NT>(acc, ring, wb + row * G * 16, ws + row * G, 0, G, (end - start + 7) >> 3,
                load_b, [] {});
    sk_store<MODE, NT>(acc, row0, e, N, end - start, bias, bdt, out, limit, alpha,
                       [&](int n) { return list[start + n]; });
}

// One pair a block (few tokens: batch-1 decode), no routing: the block's SK_WARPS warps split
// the K groups of the same 32 rows [32 blockIdx.x, +32) of expert ids[pair] and sum their
// partial products in shared memory in warp order (deterministic); B is the pair's f32 row
// a[(pair / a_div) * K ..], staged once as f16. An expert id of -1 (another
// shard's) or out of range (reported) gives zero rows. grid (N / 32, pairs); dynamic shared
// memory SK_WARPS * SK_RING + SK_WARPS * 32 * 8 * 4 + 2 K bytes.
template <int MODE>
__device__ __forceinline__ void moe_pair(const float* a, int a_div, const int* ids, int E,
                                         const u8* wb, const u8* ws, const void* bias, int bdt,
                                         float* out, int N, int K, float limit, float alpha,
                                         int* err) {
    extern __shared__ __align__(16) u8 sk_smem[];
    const int pair = blockIdx.y, row0 = blockIdx.x * 32;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, t = lane & 3;
    const int e = ids[pair];
    const int outs = MODE == 0 ? N / 2 : N;
    if (e < 0 || e >= E) {
        if (threadIdx.x == 0 && blockIdx.x == 0 && e != -1)
            report_error(err, ERR_EXPERT_ID, e, E, pair / a_div);
        if (threadIdx.x < 32) {
            const int r = MODE == 0 ? row0 / 2 + (lane & 15) : row0 + lane;
            if (MODE == 1 || lane < 16) out[(i64)pair * outs + r] = 0.0f;
        }
        return;
    }
    const int G = K / 32, per = (G + SK_WARPS - 1) / SK_WARPS;
    const int j0 = min(warp * per, G), j1 = min(j0 + per, G);
    u8* ring = sk_smem + warp * SK_RING;
    float* red = (float*)(sk_smem + SK_WARPS * SK_RING);
    // The pair's row as f16 in the k order above, staged once for the block's warps (every n8
    // column reads it; only column 0 is stored).
    W4* xs = (W4*)(red + SK_WARPS * 32 * 8);
    const float* arow = a + (i64)(pair / a_div) * K;
    auto stage_x = [&] {
        sk_stage_row(arow, K, xs);
        __syncthreads();
    };
    auto load_b = [&](int, int j) { return xs[4 * j + t]; };
    float acc[SK_MT][1][4];
    const i64 row = (i64)e * N + row0 + lane;
    sk_rows<1>(acc, ring, wb + row * G * 16, ws + row * G, j0, j1, 1, load_b, stage_x);
    // Partial sums of the warps, added in warp order by warp 0.
    float* mine = red + (warp * 32 + lane) * 8;
#pragma unroll
    for (int i = 0; i < SK_MT; i++)
#pragma unroll
        for (int c = 0; c < 4; c++) mine[4 * i + c] = acc[i][0][c];
    __syncthreads();
    if (warp != 0) return;
#pragma unroll
    for (int w = 1; w < SK_WARPS; w++)
#pragma unroll
        for (int i = 0; i < SK_MT; i++)
#pragma unroll
            for (int c = 0; c < 4; c++) acc[i][0][c] += red[(w * 32 + lane) * 8 + 4 * i + c];
    sk_store<MODE, 1>(acc, row0, e, N, 1, bias, bdt, out, limit, alpha, [&](int) { return pair; });
}

// Tiles of up to 8 NT pairs; MINB blocks an SM (the register bound).
#define MOE_SKINNY(NAME_GU, NAME_DN, NT, MINB)                                                  \
    extern "C" __global__ void __launch_bounds__(32 * SK_WARPS, MINB)                          \
        NAME_GU(const u16* xs, const int* list, const int* tiles, const int* ntiles,          \
                const u8* gub, const u8* gus, const void* gbias, int bdt, float* act, int H,  \
                int I, float limit, float alpha) {                                             \
        moe_skinny<0, NT>(xs, list, tiles, ntiles, gub, gus, gbias, bdt, act, 2 * I, H, limit, \
                          alpha);                                                              \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(32 * SK_WARPS, MINB)                          \
        NAME_DN(const u16* xs, const int* list, const int* tiles, const int* ntiles,          \
                const u8* dnb, const u8* dns, const void* dbias, int bdt, float* y, int H,    \
                int I) {                                                                       \
        moe_skinny<1, NT>(xs, list, tiles, ntiles, dnb, dns, dbias, bdt, y, H, I, 0.0f, 0.0f); \
    }
MOE_SKINNY(moe_skinny_gate_up, moe_skinny_down, SK_NT, 3)
MOE_SKINNY(moe_skinny4_gate_up, moe_skinny4_down, 4, 4)

// x [T, H] -> act [T*k, I] and act -> y [T*k, H], one pair a block (see moe_pair).
extern "C" __global__ void __launch_bounds__(32 * SK_WARPS)
    moe_pair_gate_up(const float* x, int k, const int* ids, int E, const u8* gub, const u8* gus,
                     const void* gbias, int bdt, float* act, int H, int I, float limit,
                     float alpha, int* err) {
    moe_pair<0>(x, k, ids, E, gub, gus, gbias, bdt, act, 2 * I, H, limit, alpha, err);
}

extern "C" __global__ void __launch_bounds__(32 * SK_WARPS)
    moe_pair_down(const float* act, const int* ids, int E, const u8* dnb, const u8* dns,
                  const void* dbias, int bdt, float* y, int H, int I, int* err) {
    moe_pair<1>(act, 1, ids, E, dnb, dns, dbias, bdt, y, H, I, 0.0f, 0.0f, err);
}

// ---- One token's pairs (batch-1 decode), bandwidth first. A row tile is 16 whole rows of
// the pair's expert, which lie together in memory (16 G code groups of 16 bytes, 16 G scale
// bytes); KS warps share a tile, taking its stages of T1_GS groups in turn, and stream them
// through their own cp.async rings: a row's T1_GS * 16 bytes are one
// coalesced run of 4 lanes (moe_pair's copies were 16 bytes from 32 rows each, half of every
// sector unused). The tile's scales are copied once, whole. The product is sk_rows's: A = the
// codes decoded to f16, B = the pair's row as f16 in the decode's k order (sk_rows's above;
// on sm_89+ the E4M3 route's, see MX_E4M3), the same in every column, so every column holds
// the sums; the KS partial sums are added in warp order.
#define T1_WARPS 6
#define T1_GS 4                    // groups a stage
#define T1_STAGES 3                // ring depth: 2 stages in flight a warp
#define T1_LD (T1_GS * 16 + 16)    // staged row stride: the 8 rows g (and g + 8) in other banks
#define T1_SLOT (16 * T1_LD)

// Dynamic shared memory: the pair's row as f16 (2 K bytes), the block's tiles' scales
// (WARPS / KS tiles of 16 G bytes), each warp's ring (STAGES * T1_SLOT bytes) and the
// partial sums (WARPS * 16 floats). grid (N / (16 WARPS / KS) rounded up, pairs),
// 32 WARPS threads; N % 16 == 0, K % 32 == 0, wb and ws 16-byte aligned.
// With `logits` (the router's [T, E] logits, E <= 128; `topk` experts a token) the block takes
// its pair's expert from the top-k of its token's row itself (topk_small_warp: the router's
// picks), so the router needs no last block; gate_up's block (0, token's first pair) then
// writes the token's ids and weights (`ids`, `wts`) for the combine after down. Without it,
// `ids` holds the pairs' experts.
template <int MODE, int KS, int WARPS = T1_WARPS, int STAGES = T1_STAGES>
__device__ __forceinline__ void moe_t1(const float* a, int a_div, int* ids, int E, const u8* wb,
                                       const u8* ws, const void* bias, int bdt, float* out,
                                       int N, int K, float limit, float alpha, int* err,
                                       const float* logits, float* wts, int topk) {
    extern __shared__ __align__(16) u8 sk_smem[];
    __shared__ int picked[32];
    constexpr int TILES = WARPS / KS;
    const int pair = blockIdx.y;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int tile = warp / KS, kh = warp % KS;
    const int row0 = (blockIdx.x * TILES + tile) * 16;
    const int G = K / 32;
    int e;
    if (logits) {
        const int tok = pair / topk, slot = pair % topk;
        if (warp == 0) {
            int id;
            float wt;
            topk_small_warp(logits + (i64)tok * E, E, topk, lane, id, wt);
            if (lane < topk) {
                picked[lane] = id;
                if (MODE == 0 && blockIdx.x == 0 && slot == 0) {
                    ids[(i64)tok * topk + lane] = id;
                    wts[(i64)tok * topk + lane] = wt;
                }
            }
        }
        __syncthreads();
        e = picked[slot];
    } else {
        e = ids[pair];
    }
    const int outs = MODE == 0 ? N / 2 : N;
    const bool live = row0 < N;
    if (e < 0 || e >= E) {
        if (threadIdx.x == 0 && blockIdx.x == 0 && e != -1)
            report_error(err, ERR_EXPERT_ID, e, E, pair / a_div);
        if (live && kh == 0 && lane < 16 && (MODE == 1 || lane < 8))
            out[(i64)pair * outs + (MODE == 0 ? row0 / 2 : row0) + lane] = 0.0f;
        return;
    }
    W4* xs = (W4*)sk_smem;
    u8* sc = sk_smem + 2 * K + tile * 16 * G;
    u8* ring = sk_smem + 2 * K + TILES * 16 * G + warp * STAGES * T1_SLOT;
    float* red = (float*)(sk_smem + 2 * K + TILES * 16 * G + WARPS * STAGES * T1_SLOT);
    const u8* wrows = wb + ((i64)e * N + row0) * G * 16;
    const u8* srows = ws + ((i64)e * N + row0) * G;
    // The tile's stages of T1_GS groups go round its KS warps (stage s of this warp: the
    // tile's stage KS s + kh), so the KS warps copy neighbouring runs of each row at a time.
    const int tile_stages = (G + T1_GS - 1) / T1_GS;
    const int stages = (tile_stages - kh + KS - 1) / KS;
    auto first_group = [&](int s) { return (KS * s + kh) * T1_GS; };
    // Stage s: row r's groups [first_group(s), +T1_GS) into slot s % STAGES; lane copies
    // group first_group(s) + lane % 4 of rows lane / 4 and lane / 4 + 8, so its source moves
    // on by KS T1_GS groups a stage (addresses formed once: the copies are most of a stage's
    // integer work otherwise).
    static_assert(16 * T1_GS == 64, "a stage's copies are two a lane");
    const int cr = lane >> 2, cp = lane & 3;
    const u8* src = wrows + ((i64)cr * G + kh * T1_GS + cp) * 16;
    const u32 dst = smem_addr(ring) + cr * T1_LD + cp * 16;
    auto issue = [&](int s) {
        if (live && s < stages && first_group(s) + cp < G) {
            const u8* from = src + (i64)s * (KS * T1_GS * 16);
            const u32 to = dst + (s % STAGES) * T1_SLOT;
            asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(to), "l"(from));
            asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(to + 8 * T1_LD),
                         "l"(from + (i64)8 * G * 16));
        }
        cp_async_commit();
    };
    if (live)  // the tile's scales, shared out over its warps: a group of their own
        for (int c = kh * 32 + lane; c < G; c += KS * 32) cp_async<16>(sc + 16 * c, srows + 16 * c);
    cp_async_commit();
#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) issue(s);
    // down is launched early (PDL): its ids (or the logits it takes them from) come from the
    // router, two kernels back, and its weights from no kernel; its activations from gate_up,
    // the kernel before. This holds only while gate_up is a plain launch (the router complete
    // before it starts): launching gate_up early too let down read the ids before the router
    // wrote them (GPU tests failed); gate_up early with its wait before the ids and its trigger
    // after it was correct but slower (H100 425 / 394 against 428 / 428 tok/s).
    if (MODE == 1) pdl_wait();
    sk_stage_row(a + (i64)(pair / a_div) * K, K, xs);
    cp_async_wait<STAGES - 1>();  // this thread's scale copies
    __syncthreads();                 // everyone's, and xs
    const float zero[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    float acc0 = 0.0f, acc1 = 0.0f;  // rows g and g + 8
    for (int s = 0; s < stages; s++) {
        issue(s + STAGES - 1);
        cp_async_wait<STAGES - 1>();
        __syncwarp();  // the other lanes' copies of stage s are visible
        const u8* slot = ring + (s % STAGES) * T1_SLOT;
        // A group's operands, then its product: a full stage loads all its groups' operands
        // before the first product (branch-free, so the loads and decodes of the groups
        // overlap: one group at a time left each warp waiting on its shared-memory loads and
        // its two dependent mma); the tile's last stage may be short.
        struct Group {
            u32 q0, q1;
            W4 xb;
            u32 s0, s1;
        };
        auto load = [&](int p) {
            const int j = first_group(s) + p;
            return Group{*(const u32*)(slot + g * T1_LD + p * 16 + 4 * t),
                         *(const u32*)(slot + (g + 8) * T1_LD + p * 16 + 4 * t), xs[4 * j + t],
                         sc[g * G + j], sc[(g + 8) * G + j]};
        };
        auto product = [&](const Group& o) {
            float pr[4];
#if MX_E4M3
            u32 l0[2], h0[2], l1[2], h1[2];
            mx4_e4m3_f16x2(o.q0, l0, h0);
            mx4_e4m3_f16x2(o.q1, l1, h1);
            mma_f16_k16(pr, zero, l0[0], l1[0], l0[1], l1[1], o.xb.x, o.xb.y);
            mma_f16_k16(pr, pr, h0[0], h1[0], h0[1], h1[1], o.xb.z, o.xb.w);
#else
            mma_f16_k16(pr, zero, mx4_top_f16x2(o.q0), mx4_top_f16x2(o.q1),
                        mx4_top_f16x2(o.q0 << 4), mx4_top_f16x2(o.q1 << 4), o.xb.x, o.xb.y);
            mma_f16_k16(pr, pr, mx4_top_f16x2(o.q0 << 8), mx4_top_f16x2(o.q1 << 8),
                        mx4_top_f16x2(o.q0 << 12), mx4_top_f16x2(o.q1 << 12), o.xb.z, o.xb.w);
#endif
            acc0 = fmaf(pr[0], mx_factor(o.s0), acc0);
            acc1 = fmaf(pr[2], mx_factor(o.s1), acc1);
        };
        if (first_group(s) + T1_GS <= G) {
            Group o[T1_GS];
#pragma unroll
            for (int p = 0; p < T1_GS; p++) o[p] = load(p);
#pragma unroll
            for (int p = 0; p < T1_GS; p++) product(o[p]);
        } else {
            for (int p = 0; first_group(s) + p < G; p++) product(load(p));
        }
        __syncwarp();  // slot s is refilled by a later issue
    }
    cp_async_wait<0>();
    if (KS > 1) {
        if (t == 0) {
            red[warp * 16 + g] = acc0;
            red[warp * 16 + g + 8] = acc1;
        }
        __syncthreads();
        if (kh != 0) return;
#pragma unroll
        for (int w = 1; w < KS; w++) {
            acc0 += red[(warp + w) * 16 + g];
            acc1 += red[(warp + w) * 16 + g + 8];
        }
    }
    if (!live) return;
    const i64 brow = (i64)e * N + row0 + g;
    if (MODE == 0) {
        // Gate rows are even, up rows odd: row g's up row g + 1 is lane + 4's.
        const float up0 = __shfl_down_sync(0xffffffffu, acc0, 4);
        const float up1 = __shfl_down_sync(0xffffffffu, acc1, 4);
        if (t == 0 && (g & 1) == 0) {
            float* o = out + (i64)pair * outs + (row0 + g) / 2;
            o[0] = swiglu(acc0 + ldf(bias, bdt, brow), up0 + ldf(bias, bdt, brow + 1), limit,
                          alpha);
            o[4] = swiglu(acc1 + ldf(bias, bdt, brow + 8), up1 + ldf(bias, bdt, brow + 9), limit,
                          alpha);
        }
    } else if (t == 0) {
        float* o = out + (i64)pair * N + row0 + g;
        o[0] = acc0 + ldf(bias, bdt, brow);
        o[8] = acc1 + ldf(bias, bdt, brow + 8);
    }
}

// x [T, H] -> act [T*k, I] (3 warps a tile) and act -> y [T*k, H] (6 warps a tile: half as
// many rows) (see moe_t1).
#define T1_GATE_UP_KS 3
#define T1_DOWN_KS 6
// The kernels of a shape: WARPS warps a block, KS a tile, STAGES deep rings, at least MINB
// blocks an SM (the register cap: 6 blocks of 6 warps at 56 registers fill an SM's 64K). The
// default 6-warp blocks, and the 4-warp ones with 4-deep rings they replaced (`_w4`; see
// moe_skinny.rs).
#define MOE_T1_KERNELS(SUFFIX, WARPS, GU_KS, DN_KS, STAGES, MINB)                              \
    extern "C" __global__ void __launch_bounds__(32 * WARPS, MINB) moe_t1_gate_up##SUFFIX(      \
        const float* x, int k, int* ids, int E, const u8* gub, const u8* gus,                  \
        const void* gbias, int bdt, float* act, int H, int I, float limit, float alpha,        \
        int* err, const float* logits, float* wts) {                                           \
        pdl_trigger();                                                                         \
        moe_t1<0, GU_KS, WARPS, STAGES>(x, k, ids, E, gub, gus, gbias, bdt, act, 2 * I, H,     \
                                        limit, alpha, err, logits, wts, k);                    \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(32 * WARPS, MINB) moe_t1_down##SUFFIX(         \
        const float* act, int* ids, int E, const u8* dnb, const u8* dns, const void* dbias,    \
        int bdt, float* y, int H, int I, int* err, const float* logits, int k) {               \
        pdl_trigger(); /* the combine may launch (it waits for this kernel) */                 \
        moe_t1<1, DN_KS, WARPS, STAGES>(act, 1, ids, E, dnb, dns, dbias, bdt, y, H, I, 0.0f,   \
                                        0.0f, err, logits, nullptr, k);                        \
    }
MOE_T1_KERNELS(, T1_WARPS, T1_GATE_UP_KS, T1_DOWN_KS, T1_STAGES, 6)
MOE_T1_KERNELS(_w4, 4, 2, 4, 4, 1)
