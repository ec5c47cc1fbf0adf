// Attention with per-head sinks, sliding window and GQA over an f32 KV cache [C, NKV*D].

// Write this step's k/v rows into the caches at the rows `pos` gives (their positions, or
// their slots in a paged pool).
extern "C" __global__ void kv_write(const float* k, const float* v, const int* pos, float* kc,
                                    float* vc, int W, int cap, int* err) {
    i64 t = blockIdx.x;
    int p = pos[t];
    if (p < 0 || p >= cap) {
        if (threadIdx.x == 0) report_error(err, ERR_POSITION, p, cap, (int)t);
        return;
    }
    for (int c = threadIdx.x; c < W; c += blockDim.x) {
        kc[(i64)p * W + c] = k[t * W + c];
        vc[(i64)p * W + c] = v[t * W + c];
    }
}

// One block per (token, query head); each warp runs an online softmax over a strided subset of
// the visible keys (lanes split the head dimension), then the warps and the sink are combined.
// Dynamic shared memory: (blockDim.x / 32) * D floats. `valid`: the row's position passed the
// caller's checks; otherwise the output row is zeroed.
#define MAXR 8  // D <= 256
template <typename Rows>
__device__ __forceinline__ void attention_body(const float* q, const float* kc, const float* vc,
                                               const void* sinks, int sdt, int p, bool valid,
                                               float* o, int NQ, int NKV, int D, int window,
                                               float scale, Rows row_of) {
    extern __shared__ float sacc[];
    __shared__ float sm[32], sl[32];
    i64 t = blockIdx.x;
    int h = blockIdx.y;
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    float* out = o + (t * NQ + h) * D;
    if (!valid) {
        for (int d = threadIdx.x; d < D; d += blockDim.x) out[d] = 0.0f;
        return;
    }
    int group = NQ / NKV;
    int W = NKV * D;
    i64 off = (i64)(h / group) * D;
    int lo = (window == 0 || p + 1 - window < 0) ? 0 : p + 1 - window;
    const float* qh = q + (t * NQ + h) * D;
    float qr[MAXR], acc[MAXR];
#pragma unroll
    for (int r = 0; r < MAXR; r++) {
        int d = lane + 32 * r;
        qr[r] = d < D ? qh[d] : 0.0f;
        acc[r] = 0.0f;
    }
    float m = NEG_INF, l = 0.0f;
    int j0 = lo + wid;
    // Four keys per step: independent loads and reductions in flight (decode is latency-bound).
    for (; j0 + 3 * nw <= p; j0 += 4 * nw) {
        float s4[4];
#pragma unroll
        for (int u = 0; u < 4; u++) {
            const float* kr = kc + row_of(j0 + u * nw) * W + off;
            float s = 0.0f;
#pragma unroll
            for (int r = 0; r < MAXR; r++) {
                int d = lane + 32 * r;
                if (d < D) s += qr[r] * kr[d];
            }
            s4[u] = s;
        }
#pragma unroll
        for (int u = 0; u < 4; u++) s4[u] = warp_sum(s4[u]) * scale;
        float mn = fmaxf(fmaxf(m, fmaxf(s4[0], s4[1])), fmaxf(s4[2], s4[3]));
        float corr = expf(m - mn);
        float e4[4];
#pragma unroll
        for (int u = 0; u < 4; u++) e4[u] = expf(s4[u] - mn);
        l = l * corr + ((e4[0] + e4[1]) + (e4[2] + e4[3]));
#pragma unroll
        for (int r = 0; r < MAXR; r++) {
            int d = lane + 32 * r;
            if (d < D) {
                float a = acc[r] * corr;
#pragma unroll
                for (int u = 0; u < 4; u++) a += e4[u] * vc[row_of(j0 + u * nw) * W + off + d];
                acc[r] = a;
            }
        }
        m = mn;
    }
    for (int j = j0; j <= p; j += nw) {
        const float* kr = kc + row_of(j) * W + off;
        const float* vr = vc + row_of(j) * W + off;
        float s = 0.0f;
#pragma unroll
        for (int r = 0; r < MAXR; r++) {
            int d = lane + 32 * r;
            if (d < D) s += qr[r] * kr[d];
        }
        s = warp_sum(s) * scale;
        float mn = fmaxf(m, s);
        float corr = expf(m - mn);
        float e = expf(s - mn);
        l = l * corr + e;
#pragma unroll
        for (int r = 0; r < MAXR; r++) {
            int d = lane + 32 * r;
            if (d < D) acc[r] = acc[r] * corr + e * vr[d];
        }
        m = mn;
    }
    if (lane == 0) {
        sm[wid] = m;
        sl[wid] = l;
    }
#pragma unroll
    for (int r = 0; r < MAXR; r++) {
        int d = lane + 32 * r;
        if (d < D) sacc[wid * D + d] = acc[r];
    }
    __syncthreads();
    float sink = ldf(sinks, sdt, h);
    float M = sink;
    for (int w = 0; w < nw; w++) M = fmaxf(M, sm[w]);
    float L = expf(sink - M);
    for (int w = 0; w < nw; w++)
        if (sm[w] != NEG_INF) L += sl[w] * expf(sm[w] - M);
    float inv = 1.0f / L;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float r = 0.0f;
        for (int w = 0; w < nw; w++)
            if (sm[w] != NEG_INF) r += sacc[w * D + d] * expf(sm[w] - M);
        out[d] = r * inv;
    }
}

extern "C" __global__ void attention(const float* q, const float* kc, const float* vc,
                                     const void* sinks, int sdt, const int* pos, float* o, int NQ,
                                     int NKV, int D, int window, float scale, int cap) {
    int p = pos[blockIdx.x];
    attention_body(q, kc, vc, sinks, sdt, p, p >= 0 && p < cap, o, NQ, NKV, D, window, scale,
                   ContiguousRows{});
}

// Rows of several sequences over paged pools; pages [T, P]: row t's page table (-1 past its
// pages: a position there is refused, not read).
extern "C" __global__ void attention_paged(const float* q, const float* kc, const float* vc,
                                           const void* sinks, int sdt, const int* pos,
                                           const int* pages, int P, int shift, int rows,
                                           float* o, int NQ, int NKV, int D, int window,
                                           float scale, int* err, const int* tile_flags) {
    i64 t = blockIdx.x;
    // Rows of uniform tiles ran in attention_tiled_paged (tile_flags: paged_tiles_uniform).
    if (tile_flags && tile_flags[t / PAGED_TILE]) return;
    int p = pos[t];
    const int* table = pages + t * P;
    bool valid = p >= 0 && (p >> shift) < P;
    if (valid) {
        int last = table[p >> shift];
        valid = last >= 0 && (((i64)last + 1) << shift) <= rows;
    }
    if (!valid && threadIdx.x == 0 && blockIdx.y == 0)
        report_error(err, ERR_POSITION, p, P << shift, (int)t);
    attention_body(q, kc, vc, sinks, sdt, p, valid, o, NQ, NKV, D, window, scale,
                   PagedRows{table, shift, (1 << shift) - 1});
}
