// topk_softmax: per token, the k largest logits (NaN above all, ties to the lower index) and
// the softmax over those k. One thread per token; E <= 1024, k <= 32.
__device__ __forceinline__ bool above(float a, float b) {
    if (a != a) return b == b;
    return a > b;
}

extern "C" __global__ void topk_softmax(const float* x, int* ids, float* w, int T, int E, int K) {
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= T) return;
    const float* row = x + (i64)t * E;
    int* id = ids + (i64)t * K;
    float* wt = w + (i64)t * K;
    u32 taken[32];
    for (int i = 0; i < 32; i++) taken[i] = 0;
    for (int s = 0; s < K; s++) {
        int best = -1;
        for (int i = 0; i < E; i++) {
            if ((taken[i >> 5] >> (i & 31)) & 1u) continue;
            if (best < 0 || above(row[i], row[best])) best = i;
        }
        taken[best >> 5] |= 1u << (best & 31);
        id[s] = best;
        wt[s] = row[best];
    }
    float m = NEG_INF;
    for (int s = 0; s < K; s++) m = fmaxf(m, wt[s]);
    float sum = 0.0f;
    for (int s = 0; s < K; s++) {
        float e = expf(wt[s] - m);
        wt[s] = e;
        sum += e;
    }
    float inv = 1.0f / sum;
    for (int s = 0; s < K; s++) wt[s] *= inv;
}

// The same selection with one warp per token: the row is staged in shared memory, each pass
// takes the warp-wide best (value, lowest index) among untaken entries. Dynamic shared memory:
// (blockDim.x / 32) * E floats.
__device__ __forceinline__ bool cand_better(float v, int i, float bv, int bi) {
    if (i < 0) return false;
    if (bi < 0) return true;
    if (above(v, bv)) return true;
    if (above(bv, v)) return false;
    return i < bi;
}

// The warp's top-k and softmax of the row r (shared memory, E entries) into id[K], wt[K].
__device__ __forceinline__ void topk_row_warp(const float* r, int E, int K, int* id, float* wt,
                                              int lane) {
    u32 taken = 0;  // bit j: entry lane + 32 j taken (E <= 1024)
    float sel = 0.0f;
    for (int s = 0; s < K; s++) {
        float bv = 0.0f;
        int bi = -1;
        for (int j = 0; lane + 32 * j < E; j++) {
            if ((taken >> j) & 1u) continue;
            int i = lane + 32 * j;
            float v = r[i];
            if (cand_better(v, i, bv, bi)) {
                bv = v;
                bi = i;
            }
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (cand_better(ov, oi, bv, bi)) {
                bv = ov;
                bi = oi;
            }
        }
        if (bi >= 0 && (bi & 31) == lane) taken |= 1u << (bi >> 5);
        if (lane == s) sel = bv;
        if (lane == 0) id[s] = bi;
    }
    // Softmax over the k selected logits (lane s holds the s-th), in slot order.
    float m = NEG_INF;
    for (int s = 0; s < K; s++) m = fmaxf(m, __shfl_sync(0xffffffffu, sel, s));
    float sum = 0.0f;
    for (int s = 0; s < K; s++) sum += expf(__shfl_sync(0xffffffffu, sel, s) - m);
    float inv = 1.0f / sum;
    if (lane < K) wt[lane] = expf(sel - m) * inv;
}

extern "C" __global__ void topk_softmax_warp(const float* x, int* ids, float* w, int T, int E,
                                             int K) {
    extern __shared__ float rows[];
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    int t = blockIdx.x * nw + wid;
    if (t >= T) return;
    float* r = rows + wid * E;
    const float* row = x + (i64)t * E;
    for (int i = lane; i < E; i += 32) r[i] = row[i];
    __syncwarp();
    topk_row_warp(r, E, K, ids + (i64)t * K, w + (i64)t * K, lane);
}

// The router linear and the top-k softmax in one block per token (few tokens): logits [E] =
// x W^T + b with W [E, H] bf16 (H % 8 == 0; one warp per expert row, lanes over 8-weight
// chunks, f32), kept in shared memory, then topk_row_warp. 1024 threads; dynamic shared memory
// (H + E) floats; E <= 1024, k <= 32.
extern "C" __global__ void __launch_bounds__(1024)
    router_topk(const float* x, const u16* w, const void* bias, int bdt, int* ids, float* wts,
                int H, int E, int K) {
    extern __shared__ float sm[];
    float* xs = sm;
    float* logits = sm + H;
    const i64 t = blockIdx.x;
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    for (int i = threadIdx.x; i < H; i += blockDim.x) xs[i] = x[t * H + i];
    __syncthreads();
    const int H8 = H >> 3;
    for (int e = wid; e < E; e += nw) {
        const u32* wr = (const u32*)(w + (i64)e * H);
        float acc = 0.0f;
#pragma unroll 4
        for (int j = lane; j < H8; j += 32) {
            acc = dot8_bf16(*(const W4*)(wr + 4 * j), *(const F4*)(xs + 8 * j),
                            *(const F4*)(xs + 8 * j + 4), acc);
        }
        acc = warp_sum(acc);
        if (lane == 0) logits[e] = acc + (bias ? ldf(bias, bdt, e) : 0.0f);
    }
    __syncthreads();
    if (wid == 0) topk_row_warp(logits, E, K, ids + t * K, wts + t * K, lane);
}

// The router across the GPU (few tokens): block (e, t) computes logit e of token t with 4
// warps over quarters of the row (x W^T + b, W [E, H] bf16, H % 8 == 0, f32) into `logits`
// [T, E]; the last block of token t to finish (counted in done[t], which it sets back to 0)
// runs topk_row_warp over the row. One block a row reads the router weights at the GPU's
// bandwidth instead of one SM's. E <= 1024, k <= 32. `xr`: token t's row (global or shared
// memory); warps 0..3 of the block form the logit, all of its threads take part.
__device__ __forceinline__ void router_spread_row(const float* xr, const u16* w, const void* bias,
                                                  int bdt, float* logits, u32* done, int* ids,
                                                  float* wts, int H, int E, int K) {
    __shared__ float part[4];
    __shared__ float row[1024];
    __shared__ bool last;
    const int e = blockIdx.x;
    const i64 t = blockIdx.y;
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    const int H8 = H >> 3, quarter = (H8 + 3) >> 2;
    const u32* wr = (const u32*)(w + (i64)e * H);
    if (wid < 4) {
        float acc = 0.0f;
        const int end = min(H8, (wid + 1) * quarter);
#pragma unroll 4
        for (int j = wid * quarter + lane; j < end; j += 32) {
            acc = dot8_bf16(*(const W4*)(wr + 4 * j), *(const F4*)(xr + 8 * j),
                            *(const F4*)(xr + 8 * j + 4), acc);
        }
        acc = warp_sum(acc);
        if (lane == 0) part[wid] = acc;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        float v = ((part[0] + part[1]) + part[2]) + part[3];
        logits[t * E + e] = v + (bias ? ldf(bias, bdt, e) : 0.0f);
        __threadfence();
        last = atomicAdd(done + t, 1u) == (u32)(E - 1);
    }
    __syncthreads();
    if (!last) return;
    // Every other block's logit is visible: each fenced its write before counting.
    for (int i = threadIdx.x; i < E; i += blockDim.x) {
        float v;  // from L2 (ld.cg): the other blocks' writes, not a stale L1 line
        asm volatile("ld.global.cg.f32 %0, [%1];" : "=f"(v) : "l"(logits + t * E + i));
        row[i] = v;
    }
    if (threadIdx.x == 0) done[t] = 0;
    __syncthreads();
    if (wid == 0) topk_row_warp(row, E, K, ids + t * K, wts + t * K, lane);
}

// grid (E, T), 128 threads.
extern "C" __global__ void __launch_bounds__(128)
    router_topk_spread(const float* x, const u16* w, const void* bias, int bdt, float* logits,
                       u32* done, int* ids, float* wts, int H, int E, int K) {
    router_spread_row(x + (i64)blockIdx.y * H, w, bias, bdt, logits, done, ids, wts, H, E, K);
}

// Token t's a + b and its RMSNorm (add_rms_norm's arithmetic) formed by the block, the normed
// row into xs (shared memory, then a barrier); block (0, t) stores the sum and the normed row.
// The fused routers' first half. 256 threads, H <= 4096.
__device__ __forceinline__ void add_norm_into(const float* a, const float* b, const void* nw,
                                              int nwdt, float* sum_out, float* norm_out,
                                              float eps, int H, i64 t, float* xs) {
    const int H4 = H >> 2;
    F4 v[RN_V];
    load_sum_f4(a + t * H, b + t * H, H, v);
    add_resid_store(nullptr, blockIdx.x == 0 ? sum_out + t * H : nullptr, H, v);
    norm_store(v, H, eps, nw, nwdt, xs);
    __syncthreads();
    if (blockIdx.x == 0) {
        F4* no = (F4*)(norm_out + t * H);
        for (int c = threadIdx.x; c < H4; c += blockDim.x) no[c] = ((const F4*)xs)[c];
    }
}

// add_rms_norm and then router_topk_spread on its output in one launch (few tokens): block
// (e, t) forms token t's sum a + b and its RMSNorm itself (a row of up to 4096 floats, held as
// add_rms_norm holds it), block (0, t) stores both, and the block's router logit is formed
// from the normed row in shared memory as router_topk_spread forms it: the same arithmetic as
// the two kernels. grid (E, T), 256 threads; H % 8 == 0.
extern "C" __global__ void __launch_bounds__(256)
    add_norm_router_spread(const float* a, const float* b, const void* nw, int nwdt,
                           float* sum_out, float* norm_out, float eps, const u16* w,
                           const void* bias, int bdt, float* logits, u32* done, int* ids,
                           float* wts, int H, int E, int K) {
    __shared__ __align__(16) float xs[4 * RN_V * 256];
    const i64 t = blockIdx.y;
    // Launched early (PDL): the router row and the norm weight come from no kernel, so their
    // lines are asked for while the kernel before (o_proj) finishes; a and b after the wait.
    for (int i = 128 * threadIdx.x; i < 2 * H; i += 128 * blockDim.x) {
        prefetch_l1((const u8*)(w + (i64)blockIdx.x * H) + i);
        prefetch_l1((const u8*)nw + (nwdt == DT_F32 ? 2 * i : i));
    }
    pdl_wait();
    add_norm_into(a, b, nw, nwdt, sum_out, norm_out, eps, H, t, xs);
    router_spread_row(xs, w, bias, bdt, logits, done, ids, wts, H, E, K);
}

// add_norm_router_spread without its top-k, for a router whose MoE kernels take the top-k from
// the logits themselves (moe_t1 with `logits`): no last block, no fence or counter. Block
// (x, t) forms token t's sum and norm as add_norm_router_spread does (block (0, t) stores
// them), then the logits of experts [epb x, +epb) (epb <= 8): each the sum of four quarter-row
// partials, warp u % 8 forming unit u = (expert, quarter), added in router_spread_row's order
// (the same logits, bit for bit, whatever epb). grid (E / epb rounded up, T), 256 threads.
extern "C" __global__ void __launch_bounds__(256)
    add_norm_router_logits(const float* a, const float* b, const void* nw, int nwdt,
                           float* sum_out, float* norm_out, float eps, const u16* w,
                           const void* bias, int bdt, float* logits, int H, int E, int epb) {
    __shared__ __align__(16) float xs[4 * RN_V * 256];
    __shared__ float part[4 * 8];
    const i64 t = blockIdx.y;
    const int e0 = blockIdx.x * epb, ne = min(epb, E - e0);
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    // Launched early (PDL): the block's router rows and the norm weight come from no kernel.
    const u8* rows = (const u8*)(w + (i64)e0 * H);
    for (int i = 128 * threadIdx.x; i < 2 * H * ne; i += 128 * blockDim.x) prefetch_l1(rows + i);
    for (int i = 128 * threadIdx.x; i < 2 * H; i += 128 * blockDim.x)
        prefetch_l1((const u8*)nw + (nwdt == DT_F32 ? 2 * i : i));
    pdl_wait();
    add_norm_into(a, b, nw, nwdt, sum_out, norm_out, eps, H, t, xs);
    const int H8 = H >> 3, quarter = (H8 + 3) >> 2;
    for (int u = wid; u < 4 * ne; u += 8) {
        const u32* wr = (const u32*)(w + (i64)(e0 + (u >> 2)) * H);
        const int q = u & 3, end = min(H8, (q + 1) * quarter);
        float acc = 0.0f;
#pragma unroll 4
        for (int j = q * quarter + lane; j < end; j += 32) {
            acc = dot8_bf16(*(const W4*)(wr + 4 * j), *(const F4*)(xs + 8 * j),
                            *(const F4*)(xs + 8 * j + 4), acc);
        }
        acc = warp_sum(acc);
        if (lane == 0) part[u] = acc;
    }
    __syncthreads();
    if (threadIdx.x < ne) {
        const float* p = part + 4 * threadIdx.x;
        const int e = e0 + threadIdx.x;
        const float s = ((p[0] + p[1]) + p[2]) + p[3];
        logits[t * E + e] = s + (bias ? ldf(bias, bdt, e) : 0.0f);
    }
}
