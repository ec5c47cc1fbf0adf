// Tensor-core paths for large T (prefill): mma.sync with f32 accumulation. Activations are
// rounded to the operand type (round to nearest even) when staged into shared memory; bf16
// weights are used as they are; MXFP4 expert weights are decoded into the operand type in shared
// memory (exact: an E2M1 value times a power of two has at most 2 mantissa bits).
//
// Operand type: bf16 (sm_80+: mma m16n8k16 .bf16). Compiled with -DMMA_F16 (the portable
// flavor's compute_75..79: Turing has f16 tensor cores but no bf16 ones) the same kernels take
// f16 operands: each m16n8k16 step is two m16n8k8 .f16 steps on the same fragments, bf16 weights
// are rounded to f16 as they are staged, and MXFP4 scales outside f16's range are applied to the
// f32 partial sums (mx_to_op below). The bf16-only kernels (--dequantize, cuBLAS helpers) are
// left out of that build. With -DMMA_F16 -DMMA_SM70 (compute_70..74: Volta has neither m16n8k8
// nor ldmatrix) the f16 kernels run their k16 steps as mma.sync m8n8k4 (four 8x8 products a
// warp, one per quad pair) on fragments read from shared memory with plain 16-byte loads; see
// warp_mma_tile and acc_row/acc_col.
//
// Shared tiles are [rows][BK + 8] 16-bit operands (80-byte rows: 16-byte aligned for ldmatrix
// and conflict-free). Block: 256 threads = 8 warps as 2 (m) x 4 (n); a warp computes
// (16 MT) x (8 NT) outputs, the block (32 MT) x (32 NT). One k-tile (BK = 32, one MXFP4 scale
// group) ahead is loaded into registers while the current one is multiplied (double-buffered
// shared memory).

#define BK 32
#define LDS (BK + 8)

#ifdef MMA_F16
#define MMA_OPERAND_F16 true
#else
#define MMA_OPERAND_F16 false
#endif

#if defined(MMA_SM70) && !defined(MMA_F16)
#error "MMA_SM70 (Volta: mma.m8n8k4 .f16) needs MMA_F16"
#endif

#ifdef MMA_F16
// Two f32 -> f16x2 (low half first). cvt.rn.f16x2.f32 needs sm_80: two scalar cvt here.
__device__ __forceinline__ u32 pack_op(float lo, float hi) {
    u16 l, h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(l) : "f"(lo));
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(hi));
    return (u32)l | ((u32)h << 16);
}
#else
__device__ __forceinline__ u32 pack_bf16(float lo, float hi) {
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
__device__ __forceinline__ u32 pack_op(float lo, float hi) { return pack_bf16(lo, hi); }
#endif

// 8 bf16 weights (dense linear) as operands: as they are, or rounded to f16 (exact for
// 2^-17 <= |w| <= 65504; larger magnitudes become inf, smaller ones lose low bits).
__device__ __forceinline__ W4 bf16_weights_to_op(W4 w) {
    if (!MMA_OPERAND_F16) return w;
    auto cv = [](u32 v) { return pack_op(__uint_as_float(v << 16), __uint_as_float(v & 0xffff0000u)); };
    return W4{cv(w.x), cv(w.y), cv(w.z), cv(w.w)};
}

__device__ __forceinline__ float mma_e8m0(u32 s) {
    if (s == 0) return __int_as_float(0x00400000);  // 2^-127, subnormal
    if (s == 255) return __int_as_float(0x7f800000);
    return __int_as_float((int)(s << 23));
}

#ifndef MMA_SM70
__device__ __forceinline__ void ldsm_x4(u32& r0, u32& r1, u32& r2, u32& r3, const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(smem_addr(p)));
}

// c += A (16x16) B (16x8) on the fragments of ldmatrix.x4: a0..a3 (rows g / g+8, k 0-7 / 8-15)
// and b0, b1 (k 0-7 / 8-15). f16: the k 0-7 half (a0, a1, b0), then the k 8-15 half.
__device__ __forceinline__ void mma_k16(float* c, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0,
                                        u32 b1) {
#ifdef MMA_F16
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, "
        "{%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(b0));
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, "
        "{%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a2), "r"(a3), "r"(b1));
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#endif
}
#endif  // !MMA_SM70

#ifdef MMA_SM70
// lo[0..4), hi[0..4) += A (8x4) B (4x8) of the thread's quad pair (lanes 4q..4q+3 with
// 16+4q..16+4q+3; each quad pair has its own A, B and accumulators). PTX fragments of
// mma.m8n8k4 (.row A, .col B, .f32 C): a0, a1 = A row (lane & 3) + 4 (lane >> 4), k 0-3 (low
// half first); b0, b1 = B column (lane & 3) + 4 (lane >> 4), k 0-3; C element e (lo: e 0..3,
// hi: e 4..7) at row (lane & 1) + (e & 2) + 4 (lane >> 4), column (e & 4) + (lane & 2) + (e & 1).
__device__ __forceinline__ void mma_884(float* lo, float* hi, u32 a0, u32 a1, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m8n8k4.row.col.f32.f16.f16.f32 {%0,%1,%2,%3,%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%11}, {%0,%1,%2,%3,%4,%5,%6,%7};"
        : "+f"(lo[0]), "+f"(lo[1]), "+f"(lo[2]), "+f"(lo[3]), "+f"(hi[0]), "+f"(hi[1]),
          "+f"(hi[2]), "+f"(hi[3])
        : "r"(a0), "r"(a1), "r"(b0), "r"(b1));
}

// k 0..15 as four m8n8k4 steps: a0/a1, b0/b1 = 8 f16 (k 0-7 / 8-15) of the thread's A row and
// B column, as read from shared memory.
__device__ __forceinline__ void mma_884_k16(float* lo, float* hi, W4 a0, W4 a1, W4 b0, W4 b1) {
    mma_884(lo, hi, a0.x, a0.y, b0.x, b0.y);
    mma_884(lo, hi, a0.z, a0.w, b0.z, b0.w);
    mma_884(lo, hi, a1.x, a1.y, b1.x, b1.y);
    mma_884(lo, hi, a1.z, a1.w, b1.z, b1.w);
}
#endif  // MMA_SM70

// Where a warp's accumulators go: acc[i][j][2h] and acc[i][j][2h + 1] hold output row
// acc_row(i, h, lane) and columns acc_col(j, lane), acc_col(j, lane) + 1 of the warp's
// (16 MT) x (8 NT) tile.
// m16n8k16/m16n8k8: tile (i, j) is the 16x8 product i, j: row (lane >> 2) + 8h, column
// 2 (lane & 3).
// m8n8k4 (MMA_SM70): quad pair (qr, qc) = ((lane >> 2) & 1, (lane >> 3) & 1) owns, per i, the 8
// rows 16i + 4qr + {0..3, 8..11} and the columns qc 4NT + [0, 4NT), as NT / 2 8x8 tiles: tile
// jt's 8 registers are acc[i][2jt][0..4) (e 0..3) and acc[i][2jt + 1][0..4) (e 4..7). Its row t
// (0..7) is warp row 16i + 4qr + (t & 3) + 8 (t >> 2): the 8 lanes of one phase of a 16-byte
// shared load (two quad pairs, qr 0 and 1, same qc) read A rows distinct mod 8 and B rows
// shared by both quad pairs, so the 80-byte rows cause no bank conflicts
// (scripts/mma_sm70_layout.py checks the mapping against the PTX fragment layout).
__device__ __forceinline__ int acc_row(int i, int h, int lane) {
#ifdef MMA_SM70
    return 16 * i + 4 * ((lane >> 2) & 1) + (lane & 1) + 2 * h + 8 * (lane >> 4);
#else
    return 16 * i + (lane >> 2) + 8 * h;
#endif
}
template <int NT>
__device__ __forceinline__ int acc_col(int j, int lane) {
#ifdef MMA_SM70
    return ((lane >> 3) & 1) * 4 * NT + 8 * (j >> 1) + 4 * (j & 1) + (lane & 2);
#else
    return 8 * j + 2 * (lane & 3);
#endif
}

// acc[MT][NT][4] += As[warp rows] x Bs[warp cols]^T over one k-tile of TK (rows LD operands
// apart; BK / LDS for the kernels with register-staged tiles). SCALED: B's rows carry a
// factor bscale[n] (MXFP4 scales outside f16's range): each k16 product is formed from zero and
// added times the factor of its column (c0/c2: column acc_col, c1/c3: the next).
#ifdef MMA_SM70
template <int MT, int NT, bool SCALED, int TK = BK, int LD = LDS>
__device__ __forceinline__ void warp_mma_tile(const u16* As, const u16* Bs, float (*acc)[NT][4],
                                              int wm, int wn, int lane, const float* bscale) {
    static_assert(NT % 2 == 0, "m8n8k4 tiles pair the accumulators of j and j + 1");
    // The thread's A row of tile i (A row (lane & 3) + 4 (lane >> 4) of its quad pair's 8x8
    // product, see acc_row) and B row (output column) of tile jt (see acc_col).
    const int qr = (lane >> 2) & 1, qc = (lane >> 3) & 1, hi4 = lane >> 4;
    const u16* Aw = As + (wm * 16 * MT + 4 * qr + (lane & 3) + 8 * hi4) * LD;
    const u16* Bw = Bs + (wn * 8 * NT + qc * 4 * NT + (lane & 3) + 4 * hi4) * LD;
#pragma unroll
    for (int kk = 0; kk < TK; kk += 16) {
        W4 a[MT][2], b[NT / 2][2];
#pragma unroll
        for (int i = 0; i < MT; i++) {
            a[i][0] = *(const W4*)(Aw + 16 * i * LD + kk);
            a[i][1] = *(const W4*)(Aw + 16 * i * LD + kk + 8);
        }
#pragma unroll
        for (int jt = 0; jt < NT / 2; jt++) {
            b[jt][0] = *(const W4*)(Bw + 8 * jt * LD + kk);
            b[jt][1] = *(const W4*)(Bw + 8 * jt * LD + kk + 8);
        }
#pragma unroll
        for (int i = 0; i < MT; i++)
#pragma unroll
            for (int jt = 0; jt < NT / 2; jt++) {
                float* lo = acc[i][2 * jt];
                float* hi = acc[i][2 * jt + 1];
                if (SCALED) {
                    float t[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
                    mma_884_k16(t, t + 4, a[i][0], a[i][1], b[jt][0], b[jt][1]);
                    // e and e + 4 are 4 columns apart; odd e the column after even e.
                    const int n = wn * 8 * NT + acc_col<NT>(2 * jt, lane);
                    const float r0 = bscale[n], r1 = bscale[n + 1];
                    const float r4 = bscale[n + 4], r5 = bscale[n + 5];
                    lo[0] = fmaf(t[0], r0, lo[0]);
                    lo[1] = fmaf(t[1], r1, lo[1]);
                    lo[2] = fmaf(t[2], r0, lo[2]);
                    lo[3] = fmaf(t[3], r1, lo[3]);
                    hi[0] = fmaf(t[4], r4, hi[0]);
                    hi[1] = fmaf(t[5], r5, hi[1]);
                    hi[2] = fmaf(t[6], r4, hi[2]);
                    hi[3] = fmaf(t[7], r5, hi[3]);
                } else {
                    mma_884_k16(lo, hi, a[i][0], a[i][1], b[jt][0], b[jt][1]);
                }
            }
    }
}
#else
template <int MT, int NT, bool SCALED, int TK = BK, int LD = LDS>
__device__ __forceinline__ void warp_mma_tile(const u16* As, const u16* Bs, float (*acc)[NT][4],
                                              int wm, int wn, int lane, const float* bscale) {
#pragma unroll
    for (int kk = 0; kk < TK; kk += 16) {
        u32 a[MT][4];
#pragma unroll
        for (int i = 0; i < MT; i++) {
            int row = wm * 16 * MT + i * 16 + (lane & 15);
            int col = kk + (lane >> 4) * 8;
            ldsm_x4(a[i][0], a[i][1], a[i][2], a[i][3], As + row * LD + col);
        }
        u32 b[NT][2];
#pragma unroll
        for (int j = 0; j < NT; j += 2) {
            int n = wn * 8 * NT + j * 8 + (lane & 7) + ((lane >> 4) << 3);
            int col = kk + ((lane >> 3) & 1) * 8;
            ldsm_x4(b[j][0], b[j][1], b[j + 1][0], b[j + 1][1], Bs + n * LD + col);
        }
#pragma unroll
        for (int i = 0; i < MT; i++)
#pragma unroll
            for (int j = 0; j < NT; j++) {
                if (SCALED) {
                    float t[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                    mma_k16(t, a[i][0], a[i][1], a[i][2], a[i][3], b[j][0], b[j][1]);
                    const int n = wn * 8 * NT + acc_col<NT>(j, lane);
                    const float r0 = bscale[n], r1 = bscale[n + 1];
                    acc[i][j][0] = fmaf(t[0], r0, acc[i][j][0]);
                    acc[i][j][1] = fmaf(t[1], r1, acc[i][j][1]);
                    acc[i][j][2] = fmaf(t[2], r0, acc[i][j][2]);
                    acc[i][j][3] = fmaf(t[3], r1, acc[i][j][3]);
                } else {
                    mma_k16(acc[i][j], a[i][0], a[i][1], a[i][2], a[i][3], b[j][0], b[j][1]);
                }
            }
    }
}
#endif  // MMA_SM70

template <int MT, int NT>
__device__ __forceinline__ void zero_acc(float (*acc)[NT][4]) {
#pragma unroll
    for (int i = 0; i < MT; i++)
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int c = 0; c < 4; c++) acc[i][j][c] = 0.0f;
}

// The barrier after a k-tile is stored; f16 builds also learn whether any thread's B rows need
// their scale factor (SCALED above), bf16 builds never do.
__device__ __forceinline__ bool tile_barrier(bool rescale) {
#ifdef MMA_F16
    return __syncthreads_or(rescale) != 0;
#else
    __syncthreads();
    return false;
#endif
}

// ---------------------------------------------------------------- linear (bf16 weights)
// y [T, N] = x [T, K] W^T + b; W [N, K] bf16, K % 8 == 0. grid (ceil(N/128), ceil(T/128)).
#define L_MT 4
#define L_NT 4
#define L_BM (32 * L_MT)
#define L_BN (32 * L_NT)

extern "C" __global__ void __launch_bounds__(256) gemm_bf16(const float* x, const u16* w,
                                                            const void* bias, int bdt, float* y,
                                                            int T, int N, int K) {
    __shared__ __align__(16) u16 As[2][L_BM * LDS];
    __shared__ __align__(16) u16 Bs[2][L_BN * LDS];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp >> 2, wn = warp & 3;
    const i64 m0 = (i64)blockIdx.y * L_BM, n0 = (i64)blockIdx.x * L_BN;
    float acc[L_MT][L_NT][4];
    zero_acc<L_MT, L_NT>(acc);
    // A: 128 rows x 32 floats = 1024 float4 -> 4 per thread; B: 128 rows x 4 chunks of 8 bf16
    // -> 2 per thread.
    F4 ra[4];
    W4 rb[2];
    const int KT = (K + BK - 1) / BK;
    auto load = [&](int kt) {
        int k0 = kt * BK;
#pragma unroll
        for (int u = 0; u < 4; u++) {
            int idx = tid + 256 * u;
            int r = idx >> 3, c = (idx & 7) * 4;
            i64 row = m0 + r;
            if (row < T && k0 + c < K)
                ra[u] = *(const F4*)(x + row * K + k0 + c);
            else
                ra[u] = F4{0.0f, 0.0f, 0.0f, 0.0f};
        }
#pragma unroll
        for (int u = 0; u < 2; u++) {
            int idx = tid + 256 * u;
            int r = idx >> 2, c = (idx & 3) * 8;
            i64 n = n0 + r;
            if (n < N && k0 + c < K)
                rb[u] = ldg16_stream(w + n * K + k0 + c);
            else
                rb[u] = W4{0, 0, 0, 0};
        }
    };
    auto store = [&](int buf) {
#pragma unroll
        for (int u = 0; u < 4; u++) {
            int idx = tid + 256 * u;
            int r = idx >> 3, c = (idx & 7) * 4;
            u32* d = (u32*)(As[buf] + r * LDS + c);
            d[0] = pack_op(ra[u].x, ra[u].y);
            d[1] = pack_op(ra[u].z, ra[u].w);
        }
#pragma unroll
        for (int u = 0; u < 2; u++) {
            int idx = tid + 256 * u;
            int r = idx >> 2, c = (idx & 3) * 8;
            *(W4*)(Bs[buf] + r * LDS + c) = bf16_weights_to_op(rb[u]);
        }
    };
    load(0);
    store(0);
    __syncthreads();
    for (int kt = 0; kt < KT; kt++) {
        if (kt + 1 < KT) load(kt + 1);
        warp_mma_tile<L_MT, L_NT, false>(As[kt & 1], Bs[kt & 1], acc, wm, wn, lane, nullptr);
        if (kt + 1 < KT) store((kt + 1) & 1);
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < L_MT; i++)
#pragma unroll
        for (int j = 0; j < L_NT; j++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                i64 row = m0 + wm * 16 * L_MT + acc_row(i, h, lane);
                i64 col = n0 + wn * 8 * L_NT + acc_col<L_NT>(j, lane);
                if (row >= T) continue;
#pragma unroll
                for (int c = 0; c < 2; c++)
                    if (col + c < N)
                        y[row * N + col + c] =
                            acc[i][j][2 * h + c] + (bias ? ldf(bias, bdt, col + c) : 0.0f);
            }
}

// ---------------------------------------------------------------- MoE, tokens grouped by expert
// moe_route (one block): count the (token, slot) pairs per expert, lay the per-expert lists out
// back to back in `list` (pair indices), and enumerate the work tiles: tiles[i] = {expert,
// start, end} (at most BM pairs each) for i < *ntiles. Order inside an expert's list is not
// fixed, which does not change any result: every output row of the grouped GEMMs depends only
// on its own input row, and the combine sums a token's experts in ascending id.
// Dynamic shared memory: 3 * E ints.
extern "C" __global__ void moe_route(const int* ids, int pairs, int E, int BM, int* list,
                                     int* tiles, int* ntiles, int max_tiles, int* err) {
    extern __shared__ int sh[];
    int* cnt = sh;
    int* off = sh + E;
    int* cur = sh + 2 * E;
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
        cnt[e] = 0;
        cur[e] = 0;
    }
    __syncthreads();
    for (int p = threadIdx.x; p < pairs; p += blockDim.x) {
        int e = ids[p];
        if (e >= 0 && e < E)
            atomicAdd(&cnt[e], 1);
        else if (e != -1)  // -1: an expert of another shard
            report_error(err, ERR_EXPERT_ID, e, E, p);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        int o = 0, n = 0;
        for (int e = 0; e < E; e++) {
            off[e] = o;
            for (int s = 0; s < cnt[e] && n < max_tiles; s += BM) {
                tiles[3 * n] = e;
                tiles[3 * n + 1] = o + s;
                tiles[3 * n + 2] = o + (s + BM < cnt[e] ? s + BM : cnt[e]);
                n++;
            }
            o += cnt[e];
        }
        *ntiles = n;
    }
    __syncthreads();
    for (int p = threadIdx.x; p < pairs; p += blockDim.x) {
        int e = ids[p];
        if (e >= 0 && e < E) list[off[e] + atomicAdd(&cur[e], 1)] = p;
    }
}

// Decode 16 E2M1 codes (8 bytes, low nibble first) times 2^(s - 127) to bf16, into 8 words.
__device__ __forceinline__ void mx_to_bf16(u32 lo, u32 hi, u32 s, u32* out) {
    bool fast = s >= 3 && s <= 250;  // the exponent add stays normal
    float scale = mma_e8m0(s);
    u32 words[2] = {lo, hi};
#pragma unroll
    for (int wi = 0; wi < 2; wi++) {
#pragma unroll
        for (int b = 0; b < 4; b++) {
            u32 byte = (words[wi] >> (8 * b)) & 0xffu;
            u32 h2[2];
#pragma unroll
            for (int q = 0; q < 2; q++) {
                u32 c = q ? (byte >> 4) : (byte & 15u);
                // bf16 bits of the magnitude (0, .5, 1, 1.5, 2, 3, 4, 6): exponent 126 + e,
                // mantissa bit m; e = 0 is 0 or 0.5.
                u32 e = (c >> 1) & 3u, mb = c & 1u;
                u32 m = e ? (((126u + e) << 7) | (mb << 6)) : (mb ? 0x3f00u : 0u);
                u32 v;
                if (fast) {
                    v = m ? m + ((s - 127u) << 7) : 0u;  // exponent add (mod 2^16)
                    v &= 0x7fffu;
                } else {
                    float f = __uint_as_float(m << 16) * scale;
                    v = __float_as_uint(f) >> 16;  // exact: at most 2 mantissa bits
                }
                h2[q] = v | ((c & 8u) << 12);
            }
            out[wi * 4 + b] = h2[0] | (h2[1] << 16);
        }
    }
}

// f16 has 5 exponent bits: an E2M1 magnitude (0.5 .. 6) times 2^(t - 127) is a normal f16 for
// t in [114, 140]. Decode 16 codes as lo/hi of mx_to_bf16 with the scale s clamped into that
// range (an exponent add, exact) and return the rest, 2^(s - t) (1 for most real scales; inf
// for the NaN scale 255, as mma_e8m0), for the caller to apply to the f32 partial sums.
__device__ __forceinline__ float mx_to_f16(u32 lo, u32 hi, u32 s, u32* out) {
    const u32 t = s < 114u ? 114u : (s > 140u ? 140u : s);
    u32 words[2] = {lo, hi};
#pragma unroll
    for (int wi = 0; wi < 2; wi++) {
#pragma unroll
        for (int b = 0; b < 4; b++) {
            u32 byte = (words[wi] >> (8 * b)) & 0xffu;
            u32 h2[2];
#pragma unroll
            for (int q = 0; q < 2; q++) {
                u32 c = q ? (byte >> 4) : (byte & 15u);
                // f16 bits of the magnitude: exponent 14 + e, mantissa bit m; e = 0 is 0 or 0.5.
                u32 e = (c >> 1) & 3u, mb = c & 1u;
                u32 m = e ? (((14u + e) << 10) | (mb << 9)) : (mb ? (14u << 10) : 0u);
                u32 v = m ? (m + ((t - 127u) << 10)) & 0x7fffu : 0u;  // exponent 1 .. 30
                h2[q] = v | ((c & 8u) << 12);
            }
            out[wi * 4 + b] = h2[0] | (h2[1] << 16);
        }
    }
    return s == 255u ? __int_as_float(0x7f800000) : __int_as_float((int)((s - t + 127u) << 23));
}

// 16 MXFP4 codes with scale s as operands (8 words); returns the factor still to apply to the
// products (always 1 for bf16, whose exponent range holds every E8M0 scale).
__device__ __forceinline__ float mx_to_op(u32 lo, u32 hi, u32 s, u32* out) {
    if (MMA_OPERAND_F16) return mx_to_f16(lo, hi, s, out);
    mx_to_bf16(lo, hi, s, out);
    return 1.0f;
}

#define M_NT 4
#define M_BN (32 * M_NT)

// Grouped GEMM over one expert's pairs: rows of A are the pairs list[start..end) (A row of pair
// p: a + (p / a_div) * Kd, f32), B = the expert's MXFP4 rows [N, Kd/32 groups] (BF: bf16 rows
// [N, Kd], the experts dequantized at load), f32 accumulation.
// MODE 0 (gate_up): N = 2I rows interleaved gate/up; out[p, n/2] = swiglu(gate + bg, up + bu).
// MODE 1 (down): out[p, n] = acc + bias.
// M_MT = 2: 64 pairs a tile, 4: 128 (moe_route's BM = 32 M_MT).
// grid (ceil(N / 128), max_tiles); blocks past *ntiles exit.
template <int MODE, int M_MT, bool BF>
__device__ __forceinline__ void moe_mma(const float* a, int a_div, const int* list,
                                        const int* tiles, const int* ntiles, const u8* wb,
                                        const u8* ws, const void* bias, int bdt, float* out,
                                        int N, int Kd, float limit, float alpha) {
    static_assert(!(BF && MMA_OPERAND_F16), "bf16 expert rows need bf16 operands (sm_80)");
    constexpr int M_BM = 32 * M_MT;
    constexpr int AU = M_BM / 32;  // float4 of A per thread per k-tile
    __shared__ __align__(16) u16 As[2][M_BM * LDS];
    __shared__ __align__(16) u16 Bs[2][M_BN * LDS];
    // f16: each B row's remaining scale factor for the tile (mx_to_f16), read when a tile
    // needs it (SCALED warp_mma_tile).
    __shared__ float Bsc[2][MMA_OPERAND_F16 ? M_BN : 1];
    __shared__ int rows[M_BM];
    const int tile = blockIdx.y;
    if (tile >= *ntiles) return;
    const int e = tiles[3 * tile], start = tiles[3 * tile + 1], end = tiles[3 * tile + 2];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp >> 2, wn = warp & 3;
    const i64 n0 = (i64)blockIdx.x * M_BN;
    const int G = Kd / 32;
    if (tid < M_BM) rows[tid] = start + tid < end ? list[start + tid] : -1;
    __syncthreads();
    float acc[M_MT][M_NT][4];
    zero_acc<M_MT, M_NT>(acc);
    // A: BM rows x 32 floats = 8 BM float4 -> AU per thread. B: 128 rows x 2 halves (8 bytes
    // of codes each) -> 1 per thread. Loads run PF k-tiles ahead in registers (slot kt % PF
    // holds k-tile kt until it is stored to shared memory): with few pairs per expert (batched
    // decode) a CTA's work is a chain of small loads, so their latency must overlap.
    constexpr int PF = M_MT == 2 ? 4 : 2;
    F4 ra[PF][AU];
    u32 rlo[PF], rhi[PF], rs[PF];  // MXFP4: 8 bytes of codes and the scale
    W4 rb[PF][2];                  // BF: 16 bf16
    const int br = tid >> 1, bh = tid & 1;
    const i64 wrow = (i64)e * N + n0 + br;
    const bool brow_ok = n0 + br < N;
    const float* arow[AU];
#pragma unroll
    for (int u = 0; u < AU; u++) {
        int idx = tid + 256 * u;
        int p = rows[idx >> 3];
        arow[u] = p >= 0 ? a + (i64)(p / a_div) * Kd + (idx & 7) * 4 : nullptr;
    }
    // k-tile kt into slot q.
    auto load = [&](int kt, int q) {
#pragma unroll
        for (int u = 0; u < AU; u++)
            ra[q][u] = arow[u] ? *(const F4*)(arow[u] + kt * BK) : F4{0.0f, 0.0f, 0.0f, 0.0f};
        if (BF) {
            const W4* src = (const W4*)((const u16*)wb + wrow * Kd + kt * 32 + bh * 16);
            rb[q][0] = brow_ok ? src[0] : W4{0, 0, 0, 0};
            rb[q][1] = brow_ok ? src[1] : W4{0, 0, 0, 0};
        } else if (brow_ok) {
            uint2 v = *(const uint2*)(wb + (wrow * G + kt) * 16 + bh * 8);
            rlo[q] = v.x;
            rhi[q] = v.y;
            rs[q] = ws[wrow * G + kt];
        } else {
            rlo[q] = rhi[q] = 0;
            rs[q] = 127;
        }
    };
    // Slot q into shared-memory buffer buf (A rounded to the operand type, B decoded to it).
    // Returns whether this thread's B row needs its scale factor applied (f16 only).
    auto store = [&](int buf, int q) -> bool {
#pragma unroll
        for (int u = 0; u < AU; u++) {
            int idx = tid + 256 * u;
            int r = idx >> 3, c = (idx & 7) * 4;
            u32* d = (u32*)(As[buf] + r * LDS + c);
            d[0] = pack_op(ra[q][u].x, ra[q][u].y);
            d[1] = pack_op(ra[q][u].z, ra[q][u].w);
        }
        W4* d = (W4*)(Bs[buf] + br * LDS + bh * 16);
        if (BF) {
            d[0] = rb[q][0];
            d[1] = rb[q][1];
            return false;
        }
        u32 o[8];
        const float f = mx_to_op(rlo[q], rhi[q], rs[q], o);
        d[0] = W4{o[0], o[1], o[2], o[3]};
        d[1] = W4{o[4], o[5], o[6], o[7]};
        if (MMA_OPERAND_F16 && bh == 0) Bsc[buf][br] = f;  // both halves hold the same f
        return f != 1.0f;
    };
#pragma unroll
    for (int q = 0; q < PF; q++)
        if (q < G) load(q, q);
    // scaled: the tile in the buffer about to be multiplied has rows with a scale factor.
    bool scaled = tile_barrier(store(0, 0));
    for (int k0 = 0; k0 < G; k0 += PF) {
#pragma unroll
        for (int q = 0; q < PF; q++) {
            const int kt = k0 + q;
            if (kt < G) {
                // Slot q was stored last iteration: refill it PF tiles ahead.
                if (kt + PF < G) load(kt + PF, q);
                if (scaled)
                    warp_mma_tile<M_MT, M_NT, true>(As[kt & 1], Bs[kt & 1], acc, wm, wn, lane,
                                                    Bsc[kt & 1]);
                else
                    warp_mma_tile<M_MT, M_NT, false>(As[kt & 1], Bs[kt & 1], acc, wm, wn, lane,
                                                     nullptr);
                bool next = kt + 1 < G ? store((kt + 1) & 1, (q + 1) % PF) : false;
                scaled = tile_barrier(next);
            }
        }
    }
#pragma unroll
    for (int i = 0; i < M_MT; i++)
#pragma unroll
        for (int j = 0; j < M_NT; j++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                int r = wm * 16 * M_MT + acc_row(i, h, lane);
                int p = rows[r];
                i64 col = n0 + wn * 8 * M_NT + acc_col<M_NT>(j, lane);
                if (p < 0 || col >= N) continue;
                float v0 = acc[i][j][2 * h], v1 = acc[i][j][2 * h + 1];
                if (MODE == 0) {
                    // col is even: gate row col, up row col + 1 (N is even).
                    float g = v0 + ldf(bias, bdt, (i64)e * N + col);
                    float u = v1 + ldf(bias, bdt, (i64)e * N + col + 1);
                    out[(i64)p * (N / 2) + col / 2] = swiglu(g, u, limit, alpha);
                } else {
                    out[(i64)p * N + col] = v0 + ldf(bias, bdt, (i64)e * N + col);
                    if (col + 1 < N) out[(i64)p * N + col + 1] = v1 + ldf(bias, bdt, (i64)e * N + col + 1);
                }
            }
}

// x [T, H] -> act [T*k, I]; gate_up blocks [E, 2I, H/32, 16]. _mma: 64-pair tiles, _mma128:
// 128-pair tiles (many pairs per expert: the MXFP4 decode is shared by more rows).
#define MOE_GU(NAME, MT, BF)                                                                       \
    extern "C" __global__ void __launch_bounds__(256)                                          \
        NAME(const float* x, int K, const int* list, const int* tiles, const int* ntiles,      \
             const u8* gub, const u8* gus, const void* gbias, int bdt, float* act, int H, int I, \
             float limit, float alpha) {                                                       \
        moe_mma<0, MT, BF>(x, K, list, tiles, ntiles, gub, gus, gbias, bdt, act, 2 * I, H, limit,  \
                       alpha);                                                                 \
    }
MOE_GU(moe_gate_up_mma, 2, false)
MOE_GU(moe_gate_up_mma128, 4, false)
#ifndef MMA_F16
MOE_GU(moe_gate_up_mma_bf16, 2, true)
MOE_GU(moe_gate_up_mma128_bf16, 4, true)
#endif

// act [T*k, I] -> y [T*k, H]; down blocks [E, H, I/32, 16].
#define MOE_DN(NAME, MT, BF)                                                                       \
    extern "C" __global__ void __launch_bounds__(256)                                          \
        NAME(const float* act, const int* list, const int* tiles, const int* ntiles,           \
             const u8* dnb, const u8* dns, const void* dbias, int bdt, float* y, int H, int I) { \
        moe_mma<1, MT, BF>(act, 1, list, tiles, ntiles, dnb, dns, dbias, bdt, y, H, I, 0.0f, 0.0f); \
    }
MOE_DN(moe_down_mma, 2, false)
MOE_DN(moe_down_mma128, 4, false)
#ifndef MMA_F16
MOE_DN(moe_down_mma_bf16, 2, true)
MOE_DN(moe_down_mma128_bf16, 4, true)
#endif

// Below: bf16 only (the f16 build has neither --dequantize nor cuBLAS; see lib.rs).
#ifndef MMA_F16

// --dequantize: MXFP4 experts expanded to bf16 at load, blocks [.., G, 16] + scales [.., G] ->
// [.., G * 32] bf16, exactly (mx_to_bf16); one thread a group of 32.
extern "C" __global__ void moe_dequant_bf16(const u8* blocks, const u8* scales, u16* out,
                                            i64 groups) {
    const i64 g = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (g >= groups) return;
    const W4 q = *(const W4*)(blocks + g * 16);
    u32 o[16];
    mx_to_bf16(q.x, q.y, scales[g], o);
    mx_to_bf16(q.z, q.w, scales[g], o + 8);
    W4* d = (W4*)(out + g * 32);
#pragma unroll
    for (int i = 0; i < 4; i++) d[i] = W4{o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]};
}


// ---------------------------------------------------------------- cuBLAS helpers (--dequantize)
// With the experts dequantized, the large products run through cuBLAS (bf16 A and B, f32 C and
// accumulation); these kernels feed it bf16 operands rounded exactly as the kernels above stage
// them (cvt.rn: round to nearest even) and apply the biases and SwiGLU it does not.

// out [n] bf16 = x [n] f32, two elements a thread (out 4-byte aligned).
extern "C" __global__ void f32_to_bf16(const float* x, u16* out, i64 n) {
    const i64 i = 2 * ((i64)blockIdx.x * blockDim.x + threadIdx.x);
    if (i + 1 < n)
        *(u32*)(out + i) = pack_bf16(x[i], x[i + 1]);
    else if (i < n)
        out[i] = (u16)(pack_bf16(x[i], 0.0f) & 0xffffu);
}

// y [T, N] += bias [N] (dtype code bdt), one thread an element.
extern "C" __global__ void add_bias_rows(float* y, const void* bias, int bdt, int T, int N) {
    const i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (i64)T * N) y[i] += ldf(bias, bdt, i % N);
}

// xs [rows, H] bf16 = the x rows of the routed pairs list[0..rows) (token = pair / K), in the
// list's (expert) order. H even. grid (rows, ceil(H / 512)), 256 threads, two columns each.
__device__ __forceinline__ void gather_row_bf16(const float* x, int K, const int* list, int H,
                                                u16* xs) {
    const i64 r = blockIdx.x;
    const int c = 2 * (blockIdx.y * blockDim.x + threadIdx.x);
    if (c >= H) return;
    const float* src = x + (i64)(list[r] / K) * H;
    *(u32*)(xs + r * H + c) = pack_bf16(src[c], src[c + 1]);
}
extern "C" __global__ void moe_gather_bf16(const float* x, int K, const int* list, int H,
                                           u16* xs) {
    gather_row_bf16(x, K, list, H, xs);
}

// act [rows, I] bf16 = SwiGLU of gu [rows, 2I] (f32, gate/up interleaved as the checkpoint's
// rows) plus the bias of row r's expert ids[list[r]] (bias [E, 2I]), as moe_mma's gate_up
// epilogue. grid (rows, ceil(I / 256)).
extern "C" __global__ void moe_swiglu_bf16(const float* gu, const int* list, const int* ids,
                                           const void* bias, int bdt, int I, float limit,
                                           float alpha, u16* act) {
    const i64 r = blockIdx.x;
    const int j = blockIdx.y * blockDim.x + threadIdx.x;
    if (j >= I) return;
    const i64 e = ids[list[r]];
    const float* g = gu + r * 2 * I;
    const float gate = g[2 * j] + ldf(bias, bdt, e * 2 * I + 2 * j);
    const float up = g[2 * j + 1] + ldf(bias, bdt, e * 2 * I + 2 * j + 1);
    act[r * I + j] = (u16)(pack_bf16(swiglu(gate, up, limit, alpha), 0.0f) & 0xffffu);
}

// y [pairs, H] row list[r] = ys [rows, H] row r plus the bias of its expert (bias [E, H]), as
// moe_mma's down epilogue. grid (rows, ceil(H / 256)).
extern "C" __global__ void moe_scatter_bias(const float* ys, const int* list, const int* ids,
                                            const void* bias, int bdt, int H, float* y) {
    const i64 r = blockIdx.x;
    const int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= H) return;
    const int p = list[r];
    const i64 e = ids[p];
    y[(i64)p * H + c] = ys[r * H + c] + ldf(bias, bdt, e * H + c);
}

// ---------------------------------------------------------------- grouped MoE for prefill (v2)
// Many pairs per expert (prefill): A is bf16 rows in the route list's order (moe_gather_tiles
// for gate_up, the gate_up epilogue's output for down), so a tile's A rows are contiguous and
// copied with cp.async like the raw MXFP4 bytes and scales: a V2_STAGES-deep pipeline of
// V2_BK = 64 (two scale groups) per barrier. Each k-tile's codes are decoded once per block to
// bf16 in shared memory (two buffers: the decode of tile kt + 1 overlaps the MMAs of tile kt),
// block tile V2_BM pairs x V2_BN columns, 8 warps of 64 x 48. One block an SM (dynamic shared
// memory, V2_SMEM bytes; kernels.rs sets the limit and leaves the kernels out where the device
// cannot give it). Same operands, rounding and k order as moe_mma: the results are equal.
#define V2_BM 128
#define V2_BN 192
#define V2_BK 64
#define V2_LD (V2_BK + 8)
#define V2_STAGES 4
#define V2_MT 4
#define V2_NT 6
#define V2_A_BYTES (V2_BM * V2_LD * 2)
#define V2_B_BYTES (V2_BN * V2_BK / 2)
#define V2_S_BYTES (V2_BN * 4)
#define V2_STAGE_BYTES (V2_A_BYTES + V2_B_BYTES + V2_S_BYTES)
#define V2_DEC_BYTES (V2_BN * V2_LD * 2)
#define V2_SMEM (V2_STAGES * V2_STAGE_BYTES + 2 * V2_DEC_BYTES)

// 8 E2M1 codes of word w (code 2j in the low nibble of byte j) times 2^(s - 127) as 4 bf16x2
// words, for s <= 128. Codes go to the top nibble of each 16-bit half (prmt), sign stays at bit
// 15 and e1 e0 m shift to bits 8..6: the bf16 of value x 2^-126 (e = 0 codes are subnormal);
// one bf16x2 multiply by 2^(s - 1) (a normal bf16 for s <= 128) gives value x 2^(s - 127),
// exactly (at most 2 mantissa bits; subnormal results are exact too). fma with -0 keeps the
// sign of zero codes. Checked for every code and scale by scripts/mxfp4_bf16_decode.py.
__device__ __forceinline__ void e2m1x8_to_bf16(u32 w, u32 s, u32* out) {
    const u32 w4 = w << 4;
    const u32 f = ((s + 126u) << 7) * 0x10001u;
#pragma unroll
    for (int j = 0; j < 4; j++) {
        u32 x;
        // byte 1 <- w4 byte j (code 2j on top), byte 3 <- w byte j (code 2j + 1 on top)
        asm("prmt.b32 %0, %1, %2, %3;" : "=r"(x) : "r"(w), "r"(w4), "r"((j << 12) | ((4 + j) << 4)));
        const u32 v = (x & 0x80008000u) | ((x >> 6) & 0x01c001c0u);
        asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(out[j]) : "r"(v), "r"(f), "r"(0x80008000u));
    }
}

// 16 codes with scale s to bf16 (mx_to_bf16's values): the multiply above for s <= 128 (real
// checkpoints), mx_to_bf16 for the rest.
__device__ __forceinline__ void mx16_to_bf16(u32 lo, u32 hi, u32 s, u32* out) {
    if (s <= 128u) {
        e2m1x8_to_bf16(lo, s, out);
        e2m1x8_to_bf16(hi, s, out + 4);
    } else {
        mx_to_bf16(lo, hi, s, out);
    }
}

// Where one k-tile lives in shared memory (stage st).
struct V2Stage {
    u16* a;   // [V2_BM][V2_LD] bf16
    u8* b;    // [V2_BN][32] MXFP4 codes
    u32* sc;  // [V2_BN]: the aligned word holding the row's two scales
};
__device__ __forceinline__ V2Stage v2_stage(unsigned char* smem, int st) {
    unsigned char* p = smem + st * V2_STAGE_BYTES;
    return V2Stage{(u16*)p, p + V2_A_BYTES, (u32*)(p + V2_A_BYTES + V2_B_BYTES)};
}

// The block's operands: A rows [start, end) of a [*, K] bf16, B = expert e's rows n0.. of N.
struct V2Tile {
    const u16* a;
    const u8* wb;
    const u8* ws;
    int start, end, e, N, K;
    i64 n0;
};

// Issue the copies of k-tile kt into stage s: A 1024 16-byte chunks (4 a thread), codes 384
// chunks, scales one aligned word per row (G = K / 32 is even, so a row's two scales of a
// k-tile share one).
__device__ __forceinline__ void v2_issue(const V2Tile& t, V2Stage s, int kt, int tid) {
    const int G = t.K / 32;
#pragma unroll
    for (int u = 0; u < 4; u++) {
        const int c = tid + 256 * u, r = c >> 3, ch = c & 7;
        const bool ok = t.start + r < t.end;
        const u16* src = t.a + (ok ? (i64)(t.start + r) * t.K + kt * V2_BK + ch * 8 : 0);
        cp_async<16>(s.a + r * V2_LD + ch * 8, src, ok);
    }
#pragma unroll
    for (int u = 0; u < 2; u++) {
        const int c = tid + 256 * u, r = c >> 1, h = c & 1;
        if (c >= 2 * V2_BN) break;
        const bool ok = t.n0 + r < t.N;
        const i64 g = ok ? ((i64)t.e * t.N + t.n0 + r) * G + 2 * kt : 0;
        cp_async<16>(s.b + r * 32 + h * 16, t.wb + g * 16 + h * 16, ok);
    }
    if (tid < V2_BN) {
        const bool ok = t.n0 + tid < t.N;
        const i64 g = ok ? ((i64)t.e * t.N + t.n0 + tid) * G + 2 * kt : 0;
        cp_async<4>(s.sc + tid, t.ws + (g & ~(i64)3), ok);
    }
}

// Decode stage s (k-tile kt) into dec [V2_BN][V2_LD] bf16: 768 chunks of 16 codes, 3 a thread.
__device__ __forceinline__ void v2_decode(const V2Tile& t, V2Stage s, int kt, u16* dec, int tid) {
    const int G = t.K / 32;
#pragma unroll
    for (int u = 0; u < 3; u++) {
        const int c = tid + 256 * u, r = c >> 2, q = c & 3;
        const uint2 v = *(const uint2*)(s.b + r * 32 + q * 8);
        // The row's first scale of this k-tile sits at byte ((e N + n) G + 2 kt) & 3 of its word.
        const u32 off = (u32)(((i64)t.e * t.N + t.n0 + r) * G + 2 * kt) & 3u;
        const u32 sc = (s.sc[r] >> (8 * (off + (q >> 1)))) & 0xffu;
        u32 o[8];
        mx16_to_bf16(v.x, v.y, sc, o);
        W4* d = (W4*)(dec + r * V2_LD + q * 16);
        d[0] = W4{o[0], o[1], o[2], o[3]};
        d[1] = W4{o[4], o[5], o[6], o[7]};
    }
}

// gate_up (MODE 0): act [list position, N / 2] bf16 = SwiGLU(gate + bg, up + bu), rounded
// as moe_mma rounds its A when staging it for down. down (MODE 1): out [pair, N] f32 = acc +
// bias, the pair being list[position].
template <int MODE>
__device__ __forceinline__ void v2_epilogue(const V2Tile& t, float (*acc)[V2_NT][4],
                                            const int* list, const void* bias, int bdt,
                                            void* out, float limit, float alpha, int wm, int wn,
                                            int lane) {
    const i64 N = t.N;
#pragma unroll
    for (int i = 0; i < V2_MT; i++)
#pragma unroll
        for (int j = 0; j < V2_NT; j++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int pos = t.start + wm * 16 * V2_MT + acc_row(i, h, lane);
                const i64 col = t.n0 + wn * 8 * V2_NT + acc_col<V2_NT>(j, lane);
                if (pos >= t.end || col >= N) continue;
                const float v0 = acc[i][j][2 * h], v1 = acc[i][j][2 * h + 1];
                const i64 b = (i64)t.e * N + col;
                if (MODE == 0) {
                    const float g = v0 + ldf(bias, bdt, b), u = v1 + ldf(bias, bdt, b + 1);
                    const u32 y = pack_bf16(swiglu(g, u, limit, alpha), 0.0f);
                    ((u16*)out)[(i64)pos * (N / 2) + col / 2] = (u16)(y & 0xffffu);
                } else {
                    float* o = (float*)out + (i64)list[pos] * N + col;
                    o[0] = v0 + ldf(bias, bdt, b);
                    if (col + 1 < N) o[1] = v1 + ldf(bias, bdt, b + 1);
                }
            }
}

// One block: tile blockIdx.y of moe_route's table (V2_BM pairs) x columns blockIdx.x * V2_BN.
template <int MODE>
__device__ __forceinline__ void moe_mma_v2(const u16* a, const int* list, const int* tiles,
                                           const int* ntiles, const u8* wb, const u8* ws,
                                           const void* bias, int bdt, void* out, int N, int K,
                                           float limit, float alpha) {
    extern __shared__ __align__(16) unsigned char v2_smem[];
    const int tile = blockIdx.y;
    if (tile >= *ntiles) return;
    const V2Tile t{a, wb, ws, tiles[3 * tile + 1], tiles[3 * tile + 2], tiles[3 * tile], N, K,
                   (i64)blockIdx.x * V2_BN};
    u16* dec = (u16*)(v2_smem + V2_STAGES * V2_STAGE_BYTES);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp >> 2, wn = warp & 3;
    float acc[V2_MT][V2_NT][4];
    zero_acc<V2_MT, V2_NT>(acc);
    const int KT = K / V2_BK;
    // Tiles 0 .. STAGES-2 in flight, one commit group each (empty past the end, so the
    // counts below hold).
#pragma unroll
    for (int s = 0; s < V2_STAGES - 1; s++) {
        if (s < KT) v2_issue(t, v2_stage(v2_smem, s), s, tid);
        cp_async_commit();
    }
    cp_async_wait<V2_STAGES - 2>();
    __syncthreads();
    v2_decode(t, v2_stage(v2_smem, 0), 0, dec, tid);
    for (int kt = 0; kt < KT; kt++) {
        // Tile kt + 1 landed (this thread's copies; the barrier makes everyone's visible),
        // tile kt is decoded, and the MMAs of kt - 1 are done with its stage and buffer.
        cp_async_wait<V2_STAGES - 3>();
        __syncthreads();
        const int next = kt + V2_STAGES - 1;
        if (next < KT) v2_issue(t, v2_stage(v2_smem, next % V2_STAGES), next, tid);
        cp_async_commit();
        if (kt + 1 < KT)
            v2_decode(t, v2_stage(v2_smem, (kt + 1) % V2_STAGES), kt + 1,
                      dec + ((kt + 1) & 1) * (V2_BN * V2_LD), tid);
        warp_mma_tile<V2_MT, V2_NT, false, V2_BK, V2_LD>(v2_stage(v2_smem, kt % V2_STAGES).a,
                                                          dec + (kt & 1) * (V2_BN * V2_LD), acc,
                                                          wm, wn, lane, nullptr);
    }
    v2_epilogue<MODE>(t, acc, list, bias, bdt, out, limit, alpha, wm, wn, lane);
}

// xs [pairs, H] bf16 (list order) -> act [pairs, I] bf16 (list order); gate_up blocks
// [E, 2I, H/32, 16]; H % 64 == 0. grid (ceil(2I / V2_BN), max_tiles), V2_SMEM bytes.
extern "C" __global__ void __launch_bounds__(256, 1)
    moe_gate_up_v2(const u16* xs, const int* list, const int* tiles, const int* ntiles,
                   const u8* gub, const u8* gus, const void* gbias, int bdt, u16* act, int H,
                   int I, float limit, float alpha) {
    moe_mma_v2<0>(xs, list, tiles, ntiles, gub, gus, gbias, bdt, act, 2 * I, H, limit, alpha);
}

// act [pairs, I] bf16 (list order) -> y [T*k, H] f32 (pair order); down blocks [E, H, I/32,
// 16]; I % 64 == 0. grid (ceil(H / V2_BN), max_tiles), V2_SMEM bytes.
extern "C" __global__ void __launch_bounds__(256, 1)
    moe_down_v2(const u16* act, const int* list, const int* tiles, const int* ntiles,
                const u8* dnb, const u8* dns, const void* dbias, int bdt, float* y, int H,
                int I) {
    moe_mma_v2<1>(act, list, tiles, ntiles, dnb, dns, dbias, bdt, y, H, I, 0.0f, 0.0f);
}

// xs row r (bf16) = x row list[r] / K for the routed rows r < the end of the last tile (the
// list's length: pairs of other shards' experts are not in it). grid (pairs, ceil(H / 512)).
extern "C" __global__ void moe_gather_tiles(const float* x, int K, const int* list,
                                            const int* tiles, const int* ntiles, int H, u16* xs) {
    const int n = *ntiles;
    if (n == 0 || (int)blockIdx.x >= tiles[3 * (n - 1) + 2]) return;
    gather_row_bf16(x, K, list, H, xs);
}

#endif  // MMA_F16
