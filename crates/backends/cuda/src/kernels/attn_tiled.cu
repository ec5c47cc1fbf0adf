// Attention for many queries (prefill), head_dim 64: one block per (tile of 64 queries, query
// head); K/V tiles of 64 keys staged in shared memory and shared by the tile's queries, so each
// key row is read from global memory once per (tile, head) instead of once per query. Four
// threads per query pair (16 dims each), two queries per thread (each K/V value read from
// shared memory feeds both); online softmax over chunks of 8 keys, all f32 (same math as
// `attention`, another summation order). The sink enters the denominator only.
#define AT_QP 2
#define AT_Q (32 * AT_QP)  // = PAGED_TILE
#define AT_K 64
#define AT_D 64

// The tile's work; `rows_of` maps a key position to its cache row (the tile's queries all read
// the same rows: one sequence); a query's position must be below `cap`.
template <class Rows>
__device__ __forceinline__ void attention_tile(const float* q, const float* kc, const float* vc,
                                               const void* sinks, int sdt, const int* pos,
                                               float* o, int T, int NQ, int NKV, int window,
                                               float scale, int cap, Rows rows_of) {
    __shared__ __align__(16) float Ks[AT_K][AT_D];
    __shared__ __align__(16) float Vs[AT_K][AT_D];
    __shared__ int range[2];
    const int tid = threadIdx.x, qg = tid >> 2, sub = tid & 3;
    const int h = blockIdx.y;
    const int W = NKV * AT_D;
    const i64 off = (i64)(h / (NQ / NKV)) * AT_D;
    i64 t[AT_QP];
    int lo[AT_QP], hi[AT_QP];
    bool valid[AT_QP];
    if (tid == 0) {
        range[0] = 0x7fffffff;
        range[1] = -1;
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < AT_QP; r++) {
        t[r] = (i64)blockIdx.x * AT_Q + qg + 32 * r;
        int p = t[r] < T ? pos[t[r]] : -1;
        valid[r] = p >= 0 && p < cap;
        const int2 vis = visible_keys(p, valid[r], window);
        lo[r] = vis.x;
        hi[r] = vis.y;
        // Key range of the tile: [min lo, max hi].
        if (sub == 0 && valid[r]) {
            atomicMin(&range[0], lo[r]);
            atomicMax(&range[1], hi[r]);
        }
    }
    __syncthreads();
    const int klo = range[0], khi = range[1];
    float qr[AT_QP][16], acc[AT_QP][16], m[AT_QP], l[AT_QP];
#pragma unroll
    for (int r = 0; r < AT_QP; r++) {
        const float* qh = q + (t[r] * NQ + h) * AT_D + sub * 16;
#pragma unroll
        for (int d = 0; d < 16; d += 4) {
            F4 v = valid[r] ? *(const F4*)(qh + d) : F4{0.0f, 0.0f, 0.0f, 0.0f};
            qr[r][d] = v.x * scale;
            qr[r][d + 1] = v.y * scale;
            qr[r][d + 2] = v.z * scale;
            qr[r][d + 3] = v.w * scale;
        }
#pragma unroll
        for (int d = 0; d < 16; d++) acc[r][d] = 0.0f;
        m[r] = NEG_INF;
        l[r] = 0.0f;
    }
    for (int k0 = klo; k0 <= khi; k0 += AT_K) {
        __syncthreads();
        // 64 keys x 16 float4 per row = 1024 float4 per tensor; 8 each per thread.
        for (int i = tid; i < AT_K * 16; i += 128) {
            int rr = i >> 4, c = (i & 15) * 4;
            F4 kv, vv;
            load_kv4(kc, vc, rows_of, k0 + rr, khi, W, off, c, kv, vv);
            *(F4*)&Ks[rr][c] = kv;
            *(F4*)&Vs[rr][c] = vv;
        }
        __syncthreads();
        int nk = khi - k0 + 1 < AT_K ? khi - k0 + 1 : AT_K;
        for (int c0 = 0; c0 < nk; c0 += 8) {
            float s[AT_QP][8];
#pragma unroll
            for (int u = 0; u < 8; u++) {
                const float* kr = &Ks[c0 + u][sub * 16];
                float a[AT_QP];
#pragma unroll
                for (int r = 0; r < AT_QP; r++) a[r] = 0.0f;
#pragma unroll
                for (int d = 0; d < 16; d += 4) {
                    F4 kv = *(const F4*)(kr + d);
#pragma unroll
                    for (int r = 0; r < AT_QP; r++) {
                        a[r] = fmaf(qr[r][d], kv.x, a[r]);
                        a[r] = fmaf(qr[r][d + 1], kv.y, a[r]);
                        a[r] = fmaf(qr[r][d + 2], kv.z, a[r]);
                        a[r] = fmaf(qr[r][d + 3], kv.w, a[r]);
                    }
                }
#pragma unroll
                for (int r = 0; r < AT_QP; r++) s[r][u] = a[r];
            }
            float e[AT_QP][8];
#pragma unroll
            for (int r = 0; r < AT_QP; r++) {
#pragma unroll
                for (int u = 0; u < 8; u++) {
                    s[r][u] += __shfl_xor_sync(0xffffffffu, s[r][u], 1);
                    s[r][u] += __shfl_xor_sync(0xffffffffu, s[r][u], 2);
                    int j = k0 + c0 + u;
                    if (c0 + u >= nk || j < lo[r] || j > hi[r]) s[r][u] = NEG_INF;
                }
                float mn = m[r];
#pragma unroll
                for (int u = 0; u < 8; u++) mn = fmaxf(mn, s[r][u]);
                // No visible key yet: mref = 0 makes corr and e[] zero (no branch: the warp
                // stays converged for the shuffles).
                float mref = mn == NEG_INF ? 0.0f : mn;
                float corr = expf(m[r] - mref);
                float se = 0.0f;
#pragma unroll
                for (int u = 0; u < 8; u++) {
                    e[r][u] = expf(s[r][u] - mref);
                    se += e[r][u];
                }
                l[r] = l[r] * corr + se;
#pragma unroll
                for (int d = 0; d < 16; d++) acc[r][d] *= corr;
                m[r] = mn;
            }
#pragma unroll
            for (int u = 0; u < 8; u++) {
                const float* vr = &Vs[c0 + u][sub * 16];
#pragma unroll
                for (int d = 0; d < 16; d += 4) {
                    F4 vv = *(const F4*)(vr + d);
#pragma unroll
                    for (int r = 0; r < AT_QP; r++) {
                        acc[r][d] = fmaf(e[r][u], vv.x, acc[r][d]);
                        acc[r][d + 1] = fmaf(e[r][u], vv.y, acc[r][d + 1]);
                        acc[r][d + 2] = fmaf(e[r][u], vv.z, acc[r][d + 2]);
                        acc[r][d + 3] = fmaf(e[r][u], vv.w, acc[r][d + 3]);
                    }
                }
            }
        }
    }
    float sink = ldf(sinks, sdt, h);
#pragma unroll
    for (int r = 0; r < AT_QP; r++) {
        if (t[r] >= T) continue;
        float* out = o + (t[r] * NQ + h) * AT_D + sub * 16;
        float f = 0.0f;
        if (valid[r]) {
            float M = fmaxf(sink, m[r]);
            float L = expf(sink - M) + (m[r] == NEG_INF ? 0.0f : l[r] * expf(m[r] - M));
            f = (m[r] == NEG_INF ? 0.0f : expf(m[r] - M)) / L;
        }
#pragma unroll
        for (int d = 0; d < 16; d++) out[d] = acc[r][d] * f;
    }
}

extern "C" __global__ void __launch_bounds__(128)
    attention_tiled(const float* q, const float* kc, const float* vc, const void* sinks, int sdt,
                    const int* pos, float* o, int T, int NQ, int NKV, int window, float scale,
                    int cap) {
    attention_tile(q, kc, vc, sinks, sdt, pos, o, T, NQ, NKV, window, scale, cap,
                   ContiguousRows{});
}

// ---- Paged pools (chunked prefill of several sequences in one step): a tile of 64 rows is
// "uniform" when every row's position is valid and its page table agrees with the tile's first
// row's over the pages it reads (one sequence: the same key rows). attention_tiled_paged runs
// the uniform tiles through the first row's table; attention_paged runs the rows of the
// others (sequence boundaries, decode rows of many sequences) and reports bad positions.

// A row's position is valid in a paged pool: its page exists and lies inside the pool.
__device__ __forceinline__ bool paged_row_valid(int p, const int* table, int P, int shift,
                                                int rows) {
    if (p < 0 || (p >> shift) >= P) return false;
    const int last = table[p >> shift];
    return last >= 0 && (((i64)last + 1) << shift) <= rows;
}

// grid (tiles), 64 threads: flags[tile] = 1 if the tile of AT_Q rows is uniform.
extern "C" __global__ void __launch_bounds__(64)
    paged_tiles_uniform(const int* pos, const int* pages, int P, int shift, int rows, int T,
                        int* flags) {
    const i64 t0 = (i64)blockIdx.x * AT_Q;
    const int* first = pages + t0 * P;
    bool ok = true;
    for (int r = threadIdx.x; r < AT_Q; r += blockDim.x) {
        const i64 t = t0 + r;
        if (t >= T) continue;
        const int* table = pages + t * P;
        const int p = pos[t];
        if (!paged_row_valid(p, table, P, shift, rows)) {
            ok = false;
            continue;
        }
        for (int i = 0; i <= (p >> shift) && ok; i++) ok = table[i] == first[i];
    }
    ok = __syncthreads_and(ok);
    if (threadIdx.x == 0) flags[blockIdx.x] = ok;
}

// grid (tiles, NQ), 128 threads: the uniform tiles (flags) as attention_tiled does, key rows
// through the first row's page table.
extern "C" __global__ void __launch_bounds__(128)
    attention_tiled_paged(const float* q, const float* kc, const float* vc, const void* sinks,
                          int sdt, const int* pos, const int* pages, int P, int shift,
                          const int* flags, float* o, int T, int NQ, int NKV, int window,
                          float scale) {
    if (!flags[blockIdx.x]) return;
    const int* first = pages + (i64)blockIdx.x * AT_Q * P;
    attention_tile(q, kc, vc, sinks, sdt, pos, o, T, NQ, NKV, window, scale, 0x7fffffff,
                   PagedRows{first, shift, (1 << shift) - 1});
}

// ---- Few queries (decode), head_dim 64: the visible keys split over S blocks per (token,
// head) (flash-decoding), so the chip fills with one token: grid (T, NQ, S), 4 warps; each
// warp an online softmax over every 4th key of the block's chunk (lanes hold 2 dims each, four
// keys in flight), the warps merged in the block, one partial (m, l, acc[64]) per block;
// attention_merge combines the S partials with the sink. All f32.
// With `knew` (one token, T = 1): this step's k / v rows (`knew`, `vnew`) are not in the
// cache yet. Key p is read from them, and the block whose chunk holds p for the first query
// head of each KV group writes them to cache row p (kv_write folded in: no block of this
// launch reads that row from the cache); a position outside the cache is reported as
// kv_write does. With `inv_freq` too, q and k arrive before RoPE and the kernel rotates them
// as rope_pairs would (cos / sin times mscale); the rotated k is what the cache gets.

// RoPE of a head's dims 2 lane, 2 lane + 1 held by `lane` (the warp holds the whole head of
// AT_D dims): each rotates with its partner dim 32 apart (lane ^ 16), as rope_pairs does.
// Call with the whole warp.
__device__ __forceinline__ float2 rope_lane(float x0, float x1, int p, const float* inv_freq,
                                            float mscale, int lane) {
    const float p0 = __shfl_xor_sync(0xffffffffu, x0, 16);
    const float p1 = __shfl_xor_sync(0xffffffffu, x1, 16);
    const int i = (2 * lane) & (AT_D / 2 - 1);
    const float a0 = (float)p * inv_freq[i], a1 = (float)p * inv_freq[i + 1];
    const float c0 = cosf(a0) * mscale, s0 = sinf(a0) * mscale;
    const float c1 = cosf(a1) * mscale, s1 = sinf(a1) * mscale;
    if (lane < 16) return make_float2(x0 * c0 - p0 * s0, x1 * c1 - p1 * s1);
    return make_float2(x0 * c0 + p0 * s0, x1 * c1 + p1 * s1);
}

// Key row j's dims for this lane: from `fresh` (the head's row of this step's token, already
// offset to the head) for key p, else from the cache.
__device__ __forceinline__ const float* key_row(const float* cache, const float* fresh, int j,
                                               int p, int W, i64 off, int d) {
    return (fresh && j == p) ? fresh + d : cache + (i64)j * W + off;
}

extern "C" __global__ void __launch_bounds__(128)
    attention_split(const float* q, float* kc, float* vc, const int* pos, float* pm, float* pl,
                    float* pacc, int NQ, int NKV, int window, float scale, int cap,
                    const float* knew, const float* vnew, int* err, const float* inv_freq,
                    float mscale) {
    pdl_trigger();  // attention_merge may launch (it waits for this kernel)
    __shared__ float sm[4], sl[4];
    __shared__ __align__(16) float kfresh[AT_D];
    __shared__ float2 qrot[32];
    __shared__ __align__(16) float sacc[4][AT_D];
    const i64 t = blockIdx.x;
    const int h = blockIdx.y, si = blockIdx.z, S = gridDim.z;
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    const int p = pos[t];
    const i64 part = (t * NQ + h) * S + si;
    const int W = NKV * AT_D;
    const i64 off = (i64)(h / (NQ / NKV)) * AT_D + 2 * lane;
    int lo = 0, hi = -1;
    if (p >= 0 && p < cap) {
        lo = (window == 0 || p + 1 - window < 0) ? 0 : p + 1 - window;
        hi = p;
    }
    const int n = hi - lo + 1;
    const int chunk = (n + S - 1) / S;
    const int a = lo + si * chunk;
    const int b = min(hi, a + chunk - 1);
    // Launched early (PDL): with knew (one token, no kv_write before), the cached rows before p
    // come from earlier steps, so this warp's are asked for (into L2) while the kernel before
    // (q/k/v) finishes; q, knew and vnew, and every row otherwise, after the wait.
    if (knew)
        for (int j = a + wid; j <= min(b, p - 1); j += 4) {
            prefetch_l2(kc + (i64)j * W + off);
            prefetch_l2(vc + (i64)j * W + off);
        }
    pdl_wait();
    // Where key p's k / v rows are read for this head (k rotated into kfresh with RoPE).
    const float* kfrom = nullptr;
    const float* vfrom = nullptr;
    if (knew) {
        // knew holds one row (T = 1), so t = 0 here.
        const int G = NQ / NKV;
        if (hi < 0 && h == 0 && si == 0 && threadIdx.x == 0) {
            if (inv_freq && p < 0) report_error(err, ERR_ROPE_POSITION, p, 0, (int)t);
            else report_error(err, ERR_POSITION, p, cap, (int)t);
        }
        const i64 c = (i64)(h / G) * AT_D;
        kfrom = knew + c;
        vfrom = vnew + c;
        if (inv_freq && hi >= 0) {
            if (wid == 0) {
                const float2 r = rope_lane(knew[c + 2 * lane], knew[c + 2 * lane + 1], p,
                                           inv_freq, mscale, lane);
                kfresh[2 * lane] = r.x;
                kfresh[2 * lane + 1] = r.y;
            }
            // q's RoPE once a block (warp 1, beside warp 0's k) for every warp to read: each
            // warp rotating q itself after k was most of a short split's work.
            if (wid == 1) {
                const float* qh = q + (t * NQ + h) * AT_D + 2 * lane;
                qrot[lane] = rope_lane(qh[0], qh[1], p, inv_freq, mscale, lane);
            }
            __syncthreads();
            kfrom = kfresh;
        }
        if (hi >= 0 && a <= p && p <= b && h % G == 0 && threadIdx.x < AT_D) {
            kc[(i64)p * W + c + threadIdx.x] = kfrom[threadIdx.x];
            vc[(i64)p * W + c + threadIdx.x] = vfrom[threadIdx.x];
        }
    }
    float q0 = 0.0f, q1 = 0.0f;
    if (hi >= 0) {
        const float* qh = q + (t * NQ + h) * AT_D + 2 * lane;
        q0 = qh[0];
        q1 = qh[1];
        if (inv_freq) {
            const float2 r = knew ? qrot[lane] : rope_lane(q0, q1, p, inv_freq, mscale, lane);
            q0 = r.x;
            q1 = r.y;
        }
        q0 *= scale;
        q1 *= scale;
    }
    float m = NEG_INF, l = 0.0f, a0 = 0.0f, a1 = 0.0f;
    int j = a + wid;
    for (; j + 12 <= b; j += 16) {
        float s4[4], v0[4], v1[4];
#pragma unroll
        for (int u = 0; u < 4; u++) {
            const float* kr = key_row(kc, kfrom, j + 4 * u, p, W, off, 2 * lane);
            const float* vr = key_row(vc, vfrom, j + 4 * u, p, W, off, 2 * lane);
            s4[u] = q0 * kr[0] + q1 * kr[1];
            v0[u] = vr[0];
            v1[u] = vr[1];
        }
#pragma unroll
        for (int u = 0; u < 4; u++) s4[u] = warp_sum(s4[u]);
        float mn = fmaxf(fmaxf(m, fmaxf(s4[0], s4[1])), fmaxf(s4[2], s4[3]));
        float corr = expf(m - mn);
        float e4[4];
#pragma unroll
        for (int u = 0; u < 4; u++) e4[u] = expf(s4[u] - mn);
        l = l * corr + ((e4[0] + e4[1]) + (e4[2] + e4[3]));
        a0 *= corr;
        a1 *= corr;
#pragma unroll
        for (int u = 0; u < 4; u++) {
            a0 = fmaf(e4[u], v0[u], a0);
            a1 = fmaf(e4[u], v1[u], a1);
        }
        m = mn;
    }
    for (; j <= b; j += 4) {
        const float* kr = key_row(kc, kfrom, j, p, W, off, 2 * lane);
        const float* vr = key_row(vc, vfrom, j, p, W, off, 2 * lane);
        float s = warp_sum(q0 * kr[0] + q1 * kr[1]);
        float mn = fmaxf(m, s);
        float corr = expf(m - mn);
        float e = expf(s - mn);
        l = l * corr + e;
        a0 = a0 * corr + e * vr[0];
        a1 = a1 * corr + e * vr[1];
        m = mn;
    }
    if (lane == 0) {
        sm[wid] = m;
        sl[wid] = l;
    }
    sacc[wid][2 * lane] = a0;
    sacc[wid][2 * lane + 1] = a1;
    __syncthreads();
    float M = NEG_INF;
#pragma unroll
    for (int w = 0; w < 4; w++) M = fmaxf(M, sm[w]);
    if (threadIdx.x < AT_D) {
        float acc = 0.0f, L = 0.0f;
        if (M != NEG_INF) {
#pragma unroll
            for (int w = 0; w < 4; w++) {
                if (sm[w] == NEG_INF) continue;
                float f = expf(sm[w] - M);
                acc += sacc[w][threadIdx.x] * f;
                L += sl[w] * f;
            }
        }
        pacc[part * AT_D + threadIdx.x] = acc;
        if (threadIdx.x == 0) {
            pm[part] = M;
            pl[part] = L;
        }
    }
}

// grid (T, NQ), 64 threads: out = sum over the S partials (S <= MERGE_S), the sink in the
// denominator. Every partial is loaded before any is used (one memory round trip, not S).
#define MERGE_S 16
extern "C" __global__ void attention_merge(const float* pm, const float* pl, const float* pacc,
                                           const void* sinks, int sdt, const int* pos, float* o,
                                           int NQ, int S, int cap) {
    pdl_trigger();  // the GEMV after it may start loading its weights
    pdl_wait();     // launched early: the partials come from attention_split
    const i64 t = blockIdx.x;
    const int h = blockIdx.y, d = threadIdx.x;
    const int p = pos[t];
    float* out = o + (t * NQ + h) * AT_D;
    if (p < 0 || p >= cap) {
        out[d] = 0.0f;
        return;
    }
    const i64 base = (t * NQ + h) * S;
    float ms[MERGE_S], ls[MERGE_S], as[MERGE_S];
#pragma unroll
    for (int s = 0; s < MERGE_S; s++) {
        if (s < S) {
            ms[s] = pm[base + s];
            ls[s] = pl[base + s];
            as[s] = pacc[(base + s) * AT_D + d];
        }
    }
    float sink = ldf(sinks, sdt, h);
    float M = sink;
#pragma unroll
    for (int s = 0; s < MERGE_S; s++)
        if (s < S) M = fmaxf(M, ms[s]);
    float L = expf(sink - M), acc = 0.0f;
#pragma unroll
    for (int s = 0; s < MERGE_S; s++) {
        if (s >= S || ms[s] == NEG_INF) continue;
        float f = expf(ms[s] - M);
        L += ls[s] * f;
        acc += as[s] * f;
    }
    out[d] = acc / L;
}

// ---- Decode rows over paged pools with the query heads of a KV group together: one block per
// (row, KV head), one warp per query head of the group (at most 8). K/V chunks of 32 keys are
// staged once in shared memory for all of the group's heads (attention_paged reads each key
// once per query head). A warp: lane = key for the scores (its dot product over the 64 dims
// from the staged row), the chunk's online softmax by warp shuffles, then lane = dims 2 lane,
// 2 lane + 1 of the output (probabilities broadcast by shuffle). All f32, as attention_paged;
// rows of uniform tiles (tile_flags) are left to attention_tiled_paged; bad positions are
// reported and their rows zeroed. grid (T, NKV), 32 * (NQ / NKV) threads.
#define GQ_KEYS 32
#define GQ_LD (AT_D + 1)  // staged row stride: lanes reading one dim of 32 rows hit 32 banks
extern "C" __global__ void __launch_bounds__(256)
    attention_paged_gqa(const float* q, const float* kc, const float* vc, const void* sinks,
                        int sdt, const int* pos, const int* pages, int P, int shift, int rows,
                        float* o, int NQ, int NKV, int window, float scale, int* err,
                        const int* tile_flags) {
    __shared__ float Ks[GQ_KEYS * GQ_LD];
    __shared__ __align__(16) float Vs[GQ_KEYS * AT_D];
    const i64 t = blockIdx.x;
    if (tile_flags && tile_flags[t / PAGED_TILE]) return;
    const int kvh = blockIdx.y, group = NQ / NKV;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int h = kvh * group + warp;
    const int p = pos[t];
    const int* table = pages + t * P;
    const bool valid = paged_row_valid(p, table, P, shift, rows);
    float* out = o + (t * NQ + h) * AT_D + 2 * lane;
    if (!valid) {
        if (threadIdx.x == 0 && kvh == 0) report_error(err, ERR_POSITION, p, P << shift, (int)t);
        *(float2*)out = make_float2(0.0f, 0.0f);
        return;
    }
    const PagedRows rows_of{table, shift, (1 << shift) - 1};
    const int2 vis = visible_keys(p, true, window);
    const int W = NKV * AT_D;
    const i64 off = (i64)kvh * AT_D;
    // This warp's query head: dims 2 lane, 2 lane + 1.
    const float2 qv = *(const float2*)(q + (t * NQ + h) * AT_D + 2 * lane);
    const float sl2 = scale * 1.44269504088896341f;
    float m = NEG_INF, l = 0.0f, a0 = 0.0f, a1 = 0.0f;
    for (int k0 = vis.x; k0 <= vis.y; k0 += GQ_KEYS) {
        __syncthreads();  // the previous chunk is no longer read
        for (int i = threadIdx.x; i < GQ_KEYS * (AT_D / 4); i += blockDim.x) {
            const int r = i / (AT_D / 4), c = 4 * (i % (AT_D / 4));
            F4 k, v;
            load_kv4(kc, vc, rows_of, k0 + r, vis.y, W, off, c, k, v);
            Ks[r * GQ_LD + c] = k.x;
            Ks[r * GQ_LD + c + 1] = k.y;
            Ks[r * GQ_LD + c + 2] = k.z;
            Ks[r * GQ_LD + c + 3] = k.w;
            *(F4*)&Vs[r * AT_D + c] = v;
        }
        __syncthreads();
        // Score of key k0 + lane: q . k over the 64 dims (q's dims 2i, 2i+1 held by lane i).
        float s = 0.0f;
#pragma unroll
        for (int i = 0; i < 32; i++) {
            const float q0 = __shfl_sync(0xffffffffu, qv.x, i);
            const float q1 = __shfl_sync(0xffffffffu, qv.y, i);
            s = fmaf(q0, Ks[lane * GQ_LD + 2 * i], s);
            s = fmaf(q1, Ks[lane * GQ_LD + 2 * i + 1], s);
        }
        s = k0 + lane <= vis.y ? s * sl2 : NEG_INF;
        float mx = s;
#pragma unroll
        for (int d = 16; d > 0; d >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, d));
        const float mn = fmaxf(m, mx);  // finite: key k0 is visible
        const float corr = exp2f(m - mn);
        const float e = exp2f(s - mn);
        float sum = e;
#pragma unroll
        for (int d = 16; d > 0; d >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, d);
        l = l * corr + sum;
        a0 *= corr;
        a1 *= corr;
#pragma unroll 8
        for (int j = 0; j < GQ_KEYS; j++) {
            const float pj = __shfl_sync(0xffffffffu, e, j);
            const float2 v = *(const float2*)&Vs[j * AT_D + 2 * lane];
            a0 = fmaf(pj, v.x, a0);
            a1 = fmaf(pj, v.y, a1);
        }
        m = mn;
    }
    // The sink in the denominator only.
    const float sink = ldf(sinks, sdt, h) * 1.44269504088896341f;
    const float M = fmaxf(m, sink);
    const float f = exp2f(m - M) / (l * exp2f(m - M) + exp2f(sink - M));
    *(float2*)out = make_float2(a0 * f, a1 * f);
}
