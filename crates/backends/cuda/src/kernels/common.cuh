// Shared helpers of every cuda-mxfp4 kernel family. NVRTC compiles each family with this text
// prepended (no #include, so no CUDA headers are needed at run time).

typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned char u8;
typedef long long i64;

// Float dtype codes passed to kernels for weights (match gptoss_core::DType).
#define DT_F32 0
#define DT_BF16 1
#define DT_F16 2

#define NEG_INF __int_as_float(0xff800000)

// Error codes written to the error word (first writer wins): see errors.rs.
#define ERR_TOKEN_ID 1
#define ERR_POSITION 2
#define ERR_EXPERT_ID 3
#define ERR_ROPE_POSITION 4

__device__ __forceinline__ float bf16_to_f32(u16 b) { return __uint_as_float(((u32)b) << 16); }

__device__ __forceinline__ float f16_to_f32(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

// Element i of a float tensor of dtype dt, widened exactly to f32.
__device__ __forceinline__ float ldf(const void* p, int dt, i64 i) {
    if (dt == DT_BF16) return bf16_to_f32(((const u16*)p)[i]);
    if (dt == DT_F16) return f16_to_f32(((const u16*)p)[i]);
    return ((const float*)p)[i];
}

struct LdF32 {
    static __device__ __forceinline__ float ld(const void* p, i64 i) { return ((const float*)p)[i]; }
};
struct LdBf16 {
    static __device__ __forceinline__ float ld(const void* p, i64 i) {
        return bf16_to_f32(((const u16*)p)[i]);
    }
};
struct LdF16 {
    static __device__ __forceinline__ float ld(const void* p, i64 i) {
        return f16_to_f32(((const u16*)p)[i]);
    }
};

// err[0] = code, err[1..4] = details; only the first error is kept.
__device__ __forceinline__ void report_error(int* err, int code, int a, int b, int c) {
    if (atomicCAS(err, 0, code) == 0) {
        err[1] = a;
        err[2] = b;
        err[3] = c;
    }
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the sum.
__device__ float block_sum(float v) {
    __shared__ float sh[32];
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    if (wid == 0) {
        float s = lane < nw ? sh[lane] : 0.0f;
        s = warp_sum(s);
        if (lane == 0) sh[0] = s;
    }
    __syncthreads();
    return sh[0];
}

struct alignas(16) F4 {
    float x, y, z, w;
};
struct alignas(16) W4 {
    u32 x, y, z, w;
};

// 16-byte read-only load of weights that are streamed once (no L1 allocation).
__device__ __forceinline__ W4 ldg16_stream(const void* p) {
    W4 r;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
        : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
        : "l"(p));
    return r;
}

// The slots of one token's k expert ids (ids[0..k), k <= 32) in ascending (expert id, slot)
// order, into order[]; ids outside 0..E (-1: another shard's expert) are left out. Returns how
// many. The order the MoE combine kernels sum a token's experts in (deterministic).
__device__ __forceinline__ int experts_in_order(const int* ids, int K, int E, int* order) {
    int n = 0;
    for (int s = 0; s < K; s++) {
        int e = ids[s];
        if (e < 0 || e >= E) continue;
        int at = n;
        while (at > 0 && ids[order[at - 1]] > e) {
            order[at] = order[at - 1];
            at--;
        }
        order[at] = s;
        n++;
    }
    return n;
}

// acc + the dot product of 8 bf16 weights (w, low half first) with a (x[0..4)) and b (x[4..8)).
__device__ __forceinline__ float dot8_bf16(W4 w, F4 a, F4 b, float acc) {
    acc = fmaf(__uint_as_float(w.x << 16), a.x, acc);
    acc = fmaf(__uint_as_float(w.x & 0xffff0000u), a.y, acc);
    acc = fmaf(__uint_as_float(w.y << 16), a.z, acc);
    acc = fmaf(__uint_as_float(w.y & 0xffff0000u), a.w, acc);
    acc = fmaf(__uint_as_float(w.z << 16), b.x, acc);
    acc = fmaf(__uint_as_float(w.z & 0xffff0000u), b.y, acc);
    acc = fmaf(__uint_as_float(w.w << 16), b.z, acc);
    acc = fmaf(__uint_as_float(w.w & 0xffff0000u), b.w, acc);
    return acc;
}


// Rows of a tile of the tiled paged attention (attn_tiled.cu's AT_Q), which attention_paged
// leaves to it when the tile is uniform.
// The shared-memory address of a generic pointer into shared memory (ldmatrix, cp.async).
__device__ __forceinline__ u32 smem_addr(const void* p) {
    u32 a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}

// cp.async (sm_80+) of `bytes` (4 or 16) from src to shared dst; src_bytes 0 fills dst with
// zeros and reads nothing. 16-byte copies bypass L1 (.cg).
template <int BYTES>
__device__ __forceinline__ void cp_async(void* dst, const void* src, bool valid) {
    const int n = valid ? BYTES : 0;
    if (BYTES == 16)
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_addr(dst)),
                     "l"(src), "r"(n));
    else
        asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(smem_addr(dst)),
                     "l"(src), "r"(n));
}
// The same without the zero fill: all `bytes` are copied (one operand less).
template <int BYTES>
__device__ __forceinline__ void cp_async(void* dst, const void* src) {
    if (BYTES == 16)
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(smem_addr(dst)), "l"(src));
    else
        asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(smem_addr(dst)), "l"(src));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N));
}

// RMSNorm of a row held as float4 chunks by a block (decode.cu's fused norms, the fused
// router).
#define RN_V 4  // float4 chunks of a row per thread: rows of up to 4 * 4 * blockDim floats

// The row's sum of squares over the block, from the RN chunks this thread holds; then chunk c
// of w * (v * (1 / sqrt(mean + eps))) goes to dst(c, value).
template <int RN, class Dst>
__device__ __forceinline__ void norm_store_to(const F4* v, int H, float eps, const void* w,
                                              int wdt, Dst dst) {
    const int H4 = H >> 2;
    float s = 0.0f;
#pragma unroll
    for (int j = 0; j < RN; j++) {
        const int c = threadIdx.x + j * blockDim.x;
        if (c < H4) s += v[j].x * v[j].x + v[j].y * v[j].y + v[j].z * v[j].z + v[j].w * v[j].w;
    }
    s = block_sum(s);
    const float inv = 1.0f / sqrtf(s / (float)H + eps);
#pragma unroll
    for (int j = 0; j < RN; j++) {
        const int c = threadIdx.x + j * blockDim.x;
        if (c < H4) {
            F4 r;
            r.x = ldf(w, wdt, 4 * c) * (v[j].x * inv);
            r.y = ldf(w, wdt, 4 * c + 1) * (v[j].y * inv);
            r.z = ldf(w, wdt, 4 * c + 2) * (v[j].z * inv);
            r.w = ldf(w, wdt, 4 * c + 3) * (v[j].w * inv);
            dst(c, r);
        }
    }
}

// The same into a row `out` of float4 chunks.
__device__ __forceinline__ void norm_store(const F4* v, int H, float eps, const void* w, int wdt,
                                           float* out) {
    norm_store_to<RN_V>(v, H, eps, w, wdt, [&](int c, F4 r) { ((F4*)out)[c] = r; });
}

// Token t's MoE combine into the block's chunks v (RN_V float4 a thread): the sum over its
// experts in ascending expert id of y[pair] * wts[pair] (moe_combine's order); the rows of CB
// experts are loaded at once, all issued before any is used.
template <int CB>
__device__ __forceinline__ void moe_combine_chunks(i64 t, const float* y, const int* ids,
                                                   const float* wts, int K, int E, int H,
                                                   F4* v) {
    const int H4 = H >> 2;
    int order[32];
    const int n = experts_in_order(ids + t * K, K, E, order);
#pragma unroll
    for (int j = 0; j < RN_V; j++) v[j] = F4{0.0f, 0.0f, 0.0f, 0.0f};
    for (int i0 = 0; i0 < n; i0 += CB) {
        F4 yv[CB][RN_V];
        float wv[CB];
#pragma unroll
        for (int i = 0; i < CB; i++) {
            wv[i] = 0.0f;
            if (i0 + i < n) {
                const i64 pair = t * K + order[i0 + i];
                wv[i] = wts[pair];
                const F4* yr = (const F4*)(y + pair * H);
#pragma unroll
                for (int j = 0; j < RN_V; j++) {
                    const int c = threadIdx.x + j * blockDim.x;
                    if (c < H4) yv[i][j] = yr[c];
                }
            }
        }
#pragma unroll
        for (int i = 0; i < CB; i++) {
            if (i0 + i < n) {
#pragma unroll
                for (int j = 0; j < RN_V; j++) {
                    const int c = threadIdx.x + j * blockDim.x;
                    if (c < H4) {
                        v[j].x += yv[i][j].x * wv[i];
                        v[j].y += yv[i][j].y * wv[i];
                        v[j].z += yv[i][j].z * wv[i];
                        v[j].w += yv[i][j].w * wv[i];
                    }
                }
            }
        }
    }
}

// v = resid + v chunk by chunk (resid may be null: v unchanged), stored to sum_out when it is
// not null.
__device__ __forceinline__ void add_resid_store(const float* resid, float* sum_out, int H,
                                                F4* v) {
    const int H4 = H >> 2;
#pragma unroll
    for (int j = 0; j < RN_V; j++) {
        const int c = threadIdx.x + j * blockDim.x;
        if (c < H4) {
            if (resid) {
                F4 r = ((const F4*)resid)[c];
                v[j].x = r.x + v[j].x;
                v[j].y = r.y + v[j].y;
                v[j].z = r.z + v[j].z;
                v[j].w = r.w + v[j].w;
            }
            if (sum_out) ((F4*)sum_out)[c] = v[j];
        }
    }
}

// The block's float4 chunks (threadIdx.x + j blockDim.x, j < RN_V) of the row a + b (a alone
// when b is null), H % 4 == 0.
__device__ __forceinline__ void load_sum_f4(const float* a, const float* b, int H, F4* v) {
    const int H4 = H >> 2;
    const F4* ar = (const F4*)a;
    const F4* br = (const F4*)b;
    F4 u[RN_V];
#pragma unroll
    for (int j = 0; j < RN_V; j++) {
        const int c = threadIdx.x + j * blockDim.x;
        if (c < H4) {
            v[j] = ar[c];
            u[j] = br ? br[c] : F4{0.0f, 0.0f, 0.0f, 0.0f};
        }
    }
    if (br) {
#pragma unroll
        for (int j = 0; j < RN_V; j++) {
            v[j].x += u[j].x;
            v[j].y += u[j].y;
            v[j].z += u[j].z;
            v[j].w += u[j].w;
        }
    }
}

// Programmatic dependent launch (sm_90+; nothing before). pdl_trigger: the next kernel of the
// stream may start launching now (its blocks run as this one's free the SMs). pdl_wait: block
// until the previous kernel has finished and its writes are visible; a kernel launched early
// (Cuda::launch_early) reads nothing an earlier kernel wrote, and writes nothing, before it.
__device__ __forceinline__ void pdl_trigger() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;");
#endif
}
// Ask for the line holding p ahead of its use (prologues before pdl_wait): into L1 for data
// no kernel writes (weights), into L2 (coherent) for data an earlier step wrote.
__device__ __forceinline__ void prefetch_l1(const void* p) {
    asm volatile("prefetch.global.L1 [%0];" ::"l"(p));
}
__device__ __forceinline__ void prefetch_l2(const void* p) {
    asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}
__device__ __forceinline__ void pdl_wait() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// gpt-oss's clamped SwiGLU of one gate/up pair (the MoE kernels' epilogues).
__device__ __forceinline__ float swiglu(float gate, float up, float limit, float alpha) {
    gate = fminf(gate, limit);
    up = up < -limit ? -limit : (up > limit ? limit : up);
    float glu = gate * (1.0f / (1.0f + expf(-(gate * alpha))));
    return (up + 1.0f) * glu;
}

#define PAGED_TILE 64

// Key position j of row t -> cache row: the position itself (one sequence's cache) ...
struct ContiguousRows {
    __device__ __forceinline__ i64 operator()(int j) const { return j; }
};

// ... or its page's row in a pool shared by several sequences (pages: row t's page table).
struct PagedRows {
    const int* pages;
    int shift, mask;  // page_size = 1 << shift
    __device__ __forceinline__ i64 operator()(int j) const {
        return ((i64)pages[j >> shift] << shift) + (j & mask);
    }
};

// Keys a query at position p sees (causal, sliding window of `window` keys, 0 = all): [x, y];
// none (x > y) for a position that is not valid.
__device__ __forceinline__ int2 visible_keys(int p, bool valid, int window) {
    if (!valid) return make_int2(0x7fffffff, -1);
    return make_int2(window == 0 || p + 1 - window < 0 ? 0 : p + 1 - window, p);
}

// Dims c..c+3 of key j's k and v rows (zeros past the tile's last key khi): the tiled
// attention kernels stage their K/V tiles with it.
template <class Rows>
__device__ __forceinline__ void load_kv4(const float* kc, const float* vc, Rows rows_of, int j,
                                         int khi, int W, i64 off, int c, F4& k, F4& v) {
    k = F4{0.0f, 0.0f, 0.0f, 0.0f};
    v = k;
    if (j > khi) return;
    const i64 row = rows_of(j) * W + off + c;
    k = *(const F4*)(kc + row);
    v = *(const F4*)(vc + row);
}

// ---- The top-k of a few router logits inside the kernels that use it (MoE gate_up / down).
// A logit's 64-bit rank key: the value's order-preserving bits (NaN above every number, -0 as
// +0) over the complemented index, so the larger key is the better pick and equal values go to
// the lower index, as topk_row_warp picks them.
__device__ __forceinline__ unsigned long long topk_key(float v, int i) {
    u32 k;
    if (v != v) {
        k = 0xffffffffu;
    } else {
        const u32 u = __float_as_uint(v == 0.0f ? 0.0f : v);
        k = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    }
    return ((unsigned long long)k << 32) | (0xffffffffu - (u32)i);
}

// The value whose key's high word is k (a NaN for NaN).
__device__ __forceinline__ float topk_value(u32 k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

__device__ __forceinline__ u32 warp_max_u32(u32 v) {
#if __CUDA_ARCH__ >= 800
    return __reduce_max_sync(0xffffffffu, v);
#else
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
#endif
}

// The warp's top-k and softmax of a row of E <= 128 logits (any memory; lane reads entries
// lane + 32 j), k <= min(E, 32): the same picks, slots and weights as topk_row_warp. Lane s < k
// gets slot s's expert and weight. Each lane sorts its four keys, then a pick is two warp
// reductions over the lanes' best remaining keys (the high words, then among the lanes holding
// that value the low words: the lowest index) instead of k passes of shuffled (value, index)
// pairs over every entry.
__device__ __forceinline__ void topk_small_warp(const float* row, int E, int K, int lane,
                                                int& id, float& wt) {
    unsigned long long c[4];
#pragma unroll
    for (int j = 0; j < 4; j++) {
        const int i = lane + 32 * j;
        c[j] = i < E ? topk_key(row[i], i) : 0ull;  // 0: below every real key
    }
    auto order = [&](int a, int b) {
        if (c[b] > c[a]) {
            const unsigned long long x = c[a];
            c[a] = c[b];
            c[b] = x;
        }
    };
    order(0, 1);
    order(2, 3);
    order(0, 2);
    order(1, 3);
    order(1, 2);
    u32 mine = 0;  // lane s: slot s's key high word
    id = -1;
    for (int s = 0; s < K; s++) {
        const u32 hi = (u32)(c[0] >> 32);
        const u32 best = warp_max_u32(hi);
        const u32 lo = warp_max_u32(hi == best ? (u32)c[0] : 0u);
        if (hi == best && (u32)c[0] == lo) {  // this lane's head is the pick: drop it
            c[0] = c[1];
            c[1] = c[2];
            c[2] = c[3];
            c[3] = 0ull;
        }
        if (lane == s) {
            mine = best;
            id = (int)(0xffffffffu - lo);
        }
    }
    // Softmax over the k picks in slot order, as topk_row_warp forms it.
    const float sel = topk_value(mine);
    float m = NEG_INF;
    for (int s = 0; s < K; s++) m = fmaxf(m, __shfl_sync(0xffffffffu, sel, s));
    float sum = 0.0f;
    for (int s = 0; s < K; s++) sum += expf(__shfl_sync(0xffffffffu, sel, s) - m);
    const float inv = 1.0f / sum;
    wt = expf(sel - m) * inv;
}
