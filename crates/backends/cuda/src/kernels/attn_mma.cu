// Attention for many queries (prefill) on f16 tensor cores (sm_80+), head_dim 64, in the
// FlashAttention-2 layout: a block takes a tile of 64 queries of HB query heads of one KV group
// (4 warps a head, 16 query rows a warp) and stages each 64-key K/V tile once, as f16, for all
// of them. S = Q K^T, the online softmax and O = P V stay in the warp's registers: mma.sync
// m16n8k16 (f16 operands, f32 accumulation), K fragments by ldmatrix, V fragments by
// ldmatrix.trans. Q, K, V and P are rounded to f16 (cvt.rn): 4x finer than bf16, which matters
// here because scores go through exp (bf16 scores moved a random-weight 20b's router choices
// at near-ties, see NOTES.md); activations stay far inside f16's range. Scores, max, sums, the
// sink and the output in f32 (log2 domain: exp2). The sink enters the denominator only.
#define AM_Q 64   // queries of a tile (= PAGED_TILE)
#define AM_K 64   // keys of a K/V tile
#define AM_D 64   // head_dim
#define AM_LD 72  // f16 row stride of the K/V tiles: 144 bytes, so ldmatrix's 8 rows of a
                  // phase fall on distinct 16-byte bank groups
#define LOG2E 1.44269504088896341f

__device__ __forceinline__ u32 am_pack(float lo, float hi) {
    u32 r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

__device__ __forceinline__ u32 am_smem(const void* p) {
    return (u32)__cvta_generic_to_shared(p);
}

// Four 8x8 16-bit matrices; lanes 8i..8i+7 give the row addresses of matrix i.
__device__ __forceinline__ void am_ldsm(u32* r, const u16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(am_smem(p)));
}

// The same, transposed: lane gets (rows 2 (lane % 4), +1; column lane / 4) of each matrix.
__device__ __forceinline__ void am_ldsm_t(u32* r, const u16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(am_smem(p)));
}

// c (16x8, f32) += a (16x16) b (16x8); a: rows g / g+8 x k 0-7 / 8-15, b: k 0-7 / 8-15.
__device__ __forceinline__ void am_mma(float* c, const u32* a, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Min (x) and max (y) over the warp.
__device__ __forceinline__ int2 warp_span(int2 v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        v.x = min(v.x, __shfl_xor_sync(0xffffffffu, v.x, o));
        v.y = max(v.y, __shfl_xor_sync(0xffffffffu, v.y, o));
    }
    return v;
}

// Query row of the thread's row half r (0: row g = lane / 4 of the warp's 16, 1: row g + 8).
__device__ __forceinline__ i64 query_row(int tile, int warp, int lane, int r) {
    return (i64)tile * AM_Q + 16 * (warp & 3) + (lane >> 2) + 8 * r;
}

// The warp's Q (16 rows x 64 dims) as A fragments: qf[kk] covers dims 16 kk..16 kk + 15;
// a row that is not a valid query (its key range empty) is zero.
__device__ __forceinline__ void load_q(u32 (*qf)[4], const float* q, const int2* vis, int tile,
                                       int NQ, int h, int lane) {
    const int warp = threadIdx.x >> 5, c = 2 * (lane & 3);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        // a0: row g, k 0-7; a1: row g+8, k 0-7; a2: row g, k 8-15; a3: row g+8, k 8-15.
        const int r = i & 1;
        const float* row = q + (query_row(tile, warp, lane, r) * NQ + h) * AM_D + 8 * (i >> 1) + c;
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
            const float2 v = vis[r].x <= vis[r].y ? *(const float2*)(row + 16 * kk)
                                                  : make_float2(0.0f, 0.0f);
            qf[kk][i] = am_pack(v.x, v.y);
        }
    }
}

// Keys k0..k0+63 into Ks / Vs as f16 (rows past khi zero), by the block's NT threads.
template <int NT, class Rows>
__device__ __forceinline__ void stage_kv(u16* Ks, u16* Vs, const float* kc, const float* vc,
                                         int k0, int khi, int W, i64 off, Rows rows_of) {
#pragma unroll 2
    for (int i = threadIdx.x; i < AM_K * 16; i += NT) {
        const int r = i >> 4, c = (i & 15) * 4;
        F4 k, v;
        load_kv4(kc, vc, rows_of, k0 + r, khi, W, off, c, k, v);
        *(uint2*)&Ks[r * AM_LD + c] = make_uint2(am_pack(k.x, k.y), am_pack(k.z, k.w));
        *(uint2*)&Vs[r * AM_LD + c] = make_uint2(am_pack(v.x, v.y), am_pack(v.z, v.w));
    }
}

// s[j] = the warp's scores against keys 8j..8j+7 of the tile (C fragments: row g keys
// 2 (lane % 4), +1 in s[j][0..1], row g+8 in s[j][2..3]).
__device__ __forceinline__ void qk_tile(float (*s)[4], const u32 (*qf)[4], const u16* Ks,
                                        int lane) {
#pragma unroll
    for (int j = 0; j < 8; j++) {
        s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
        for (int kp = 0; kp < 2; kp++) {
            // Matrices: dims 32 kp + 0-7, 8-15 (b0, b1 of k-step 2 kp), 16-23, 24-31 (2 kp + 1).
            u32 b[4];
            am_ldsm(b, Ks + (8 * j + (lane & 7)) * AM_LD + 32 * kp + 8 * (lane >> 3));
            am_mma(s[j], qf[2 * kp], b[0], b[1]);
            am_mma(s[j], qf[2 * kp + 1], b[2], b[3]);
        }
    }
}

// Scores to the log2 domain (x scale log2 e); keys a row does not see to -inf. Row r (g, g+8)
// sees [vis[r].x, vis[r].y]; key of s[j][e] is k0 + 8j + 2 (lane % 4) + (e & 1).
__device__ __forceinline__ void mask_scores(float (*s)[4], const int2* vis, int k0, float sl2,
                                            int lane) {
    const bool whole = k0 >= max(vis[0].x, vis[1].x) && k0 + AM_K - 1 <= min(vis[0].y, vis[1].y);
#pragma unroll
    for (int j = 0; j < 8; j++) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int key = k0 + 8 * j + 2 * (lane & 3) + (e & 1);
            const int2 v = vis[e >> 1];
            const bool seen = whole || (key >= v.x && key <= v.y);
            s[j][e] = seen ? s[j][e] * sl2 : NEG_INF;
        }
    }
}

// Online softmax of row half r (0: row g, 1: row g+8) over this tile: new running max m (of
// the row; the quad's four lanes hold its 64 scores), scores to probabilities, this thread's
// part of the running sum l and the output rescaled.
__device__ __forceinline__ void softmax_rows(float (*s)[4], float (*acc)[4], float* m, float* l) {
#pragma unroll
    for (int r = 0; r < 2; r++) {
        float mx = m[r];
#pragma unroll
        for (int j = 0; j < 8; j++) mx = fmaxf(mx, fmaxf(s[j][2 * r], s[j][2 * r + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        // No visible key yet: a reference of 0 makes the correction and every p zero.
        const float ref = mx == NEG_INF ? 0.0f : mx;
        const float corr = exp2f(m[r] - ref);
        float sum = 0.0f;
#pragma unroll
        for (int j = 0; j < 8; j++) {
#pragma unroll
            for (int e = 2 * r; e < 2 * r + 2; e++) {
                s[j][e] = exp2f(s[j][e] - ref);
                sum += s[j][e];
                acc[j][e] *= corr;
            }
        }
        l[r] = l[r] * corr + sum;
        m[r] = mx;
    }
}

// P (the probabilities in s) rounded to f16 as A fragments of the k-steps of 16 keys: the C
// fragments of key tiles 2kk, 2kk+1 are exactly A's layout.
__device__ __forceinline__ void p_fragments(u32 (*pf)[4], const float (*p)[4]) {
#pragma unroll
    for (int kk = 0; kk < 4; kk++) {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const float* c = p[2 * kk + (i >> 1)] + 2 * (i & 1);
            pf[kk][i] = am_pack(c[0], c[1]);
        }
    }
}

// acc += P V, V fragments by ldmatrix.trans.
__device__ __forceinline__ void pv_tile(float (*acc)[4], const u32 (*pf)[4], const u16* Vs,
                                        int lane) {
#pragma unroll
    for (int kk = 0; kk < 4; kk++) {
        // Matrices: keys 16 kk + 0-7, 8-15 (b0, b1) of dims 8j..8j+7, then of dims 8j+8...
        const u16* v = Vs + (16 * kk + (lane & 7) + 8 * ((lane >> 3) & 1)) * AM_LD +
                       8 * (lane >> 4);
#pragma unroll
        for (int j = 0; j < 8; j += 2) {
            u32 b[4];
            am_ldsm_t(b, v + 8 * j);
            am_mma(acc[j], pf[kk], b[0], b[1]);
            am_mma(acc[j + 1], pf[kk], b[2], b[3]);
        }
    }
}

// Row half r's output: acc / (l + the sink's exp), the quad's partial sums added first.
__device__ __forceinline__ void store_rows(float* o, float (*acc)[4], const float* m, float* l,
                                           float sink2, int tile, int T, int NQ, int h,
                                           int lane) {
#pragma unroll
    for (int r = 0; r < 2; r++) {
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
        const i64 t = query_row(tile, threadIdx.x >> 5, lane, r);
        if (t >= T) continue;
        float* out = o + (t * NQ + h) * AM_D + 2 * (lane & 3);
        float f = 0.0f;
        if (m[r] != NEG_INF) {
            const float M = fmaxf(sink2, m[r]);
            f = exp2f(m[r] - M) / (exp2f(sink2 - M) + l[r] * exp2f(m[r] - M));
        }
#pragma unroll
        for (int j = 0; j < 8; j++)
            *(float2*)(out + 8 * j) =
                make_float2(acc[j][2 * r] * f, acc[j][2 * r + 1] * f);
    }
}

// One block: query tile `tile`, query heads HB * blockIdx.y .. + HB - 1 (one KV group);
// `rows_of` maps a key position to its cache row; a query's position must be below `cap`.
template <int HB, class Rows>
__device__ __forceinline__ void attention_mma_tile(const float* q, const float* kc,
                                                   const float* vc, const void* sinks, int sdt,
                                                   const int* pos, float* o, int tile, int T,
                                                   int NQ, int NKV, int window, float scale,
                                                   int cap, Rows rows_of) {
    __shared__ __align__(16) u16 Ks[AM_K * AM_LD];
    __shared__ __align__(16) u16 Vs[AM_K * AM_LD];
    __shared__ int range[2];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int h = HB * blockIdx.y + (warp >> 2);
    const int W = NKV * AM_D;
    const i64 off = (i64)(HB * blockIdx.y / (NQ / NKV)) * AM_D;
    if (threadIdx.x == 0) {
        range[0] = 0x7fffffff;
        range[1] = -1;
    }
    __syncthreads();
    // The thread's rows g and g+8 of the warp's 16 queries.
    int2 vis[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const i64 t = query_row(tile, warp, lane, r);
        const int p = t < T ? pos[t] : -1;
        const bool valid = p >= 0 && p < cap;
        vis[r] = visible_keys(p, valid, window);
        // Key range of the tile: [min x, max y] (every head of the block has the same rows).
        if (warp < 4 && valid) {
            atomicMin(&range[0], vis[r].x);
            atomicMax(&range[1], vis[r].y);
        }
    }
    const int2 wspan = warp_span(make_int2(min(vis[0].x, vis[1].x), max(vis[0].y, vis[1].y)));
    u32 qf[4][4];
    load_q(qf, q, vis, tile, NQ, h, lane);
    float acc[8][4], m[2] = {NEG_INF, NEG_INF}, l[2] = {0.0f, 0.0f};
#pragma unroll
    for (int j = 0; j < 8; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
    const float sl2 = scale * LOG2E;
    __syncthreads();
    const int klo = range[0], khi = range[1];
    for (int k0 = klo; k0 <= khi; k0 += AM_K) {
        __syncthreads();
        stage_kv<128 * HB>(Ks, Vs, kc, vc, k0, khi, W, off, rows_of);
        __syncthreads();
        // A tile none of the warp's rows sees (causal diagonal, window) costs it nothing.
        if (k0 > wspan.y || k0 + AM_K - 1 < wspan.x) continue;
        float s[8][4];
        qk_tile(s, qf, Ks, lane);
        mask_scores(s, vis, k0, sl2, lane);
        softmax_rows(s, acc, m, l);
        u32 pf[4][4];
        p_fragments(pf, s);
        pv_tile(acc, pf, Vs, lane);
    }
    store_rows(o, acc, m, l, ldf(sinks, sdt, h) * LOG2E, tile, T, NQ, h, lane);
}

// The longest tiles (last queries, most keys) start first.
__device__ __forceinline__ int heavy_first_tile() { return gridDim.x - 1 - blockIdx.x; }

// grid (tiles of 64 queries, NQ / HB), 128 HB threads.
#define ATTENTION_MMA(NAME, HB)                                                                   \
    extern "C" __global__ void __launch_bounds__(128 * HB, 2)                                        \
        NAME(const float* q, const float* kc, const float* vc, const void* sinks, int sdt,       \
             const int* pos, float* o, int T, int NQ, int NKV, int window, float scale, int cap) { \
        attention_mma_tile<HB>(q, kc, vc, sinks, sdt, pos, o, heavy_first_tile(), T, NQ, NKV,   \
                               window, scale, cap, ContiguousRows{});                           \
    }
ATTENTION_MMA(attention_mma, 1)
ATTENTION_MMA(attention_mma2, 2)

// Paged pools: the uniform tiles (flags, from attn_tiled.cu's paged_tiles_uniform) through
// their first row's page table, as attention_tiled_paged.
#define ATTENTION_MMA_PAGED(NAME, HB)                                                             \
    extern "C" __global__ void __launch_bounds__(128 * HB, 2)                                        \
        NAME(const float* q, const float* kc, const float* vc, const void* sinks, int sdt,       \
             const int* pos, const int* pages, int P, int shift, const int* flags, float* o,     \
             int T, int NQ, int NKV, int window, float scale) {                                  \
        const int tile = heavy_first_tile();                                                     \
        if (!flags[tile]) return;                                                                \
        const int* first = pages + (i64)tile * AM_Q * P;                                         \
        attention_mma_tile<HB>(q, kc, vc, sinks, sdt, pos, o, tile, T, NQ, NKV, window, scale,  \
                               0x7fffffff, PagedRows{first, shift, (1 << shift) - 1});         \
    }
ATTENTION_MMA_PAGED(attention_mma_paged, 1)
ATTENTION_MMA_PAGED(attention_mma_paged2, 2)
