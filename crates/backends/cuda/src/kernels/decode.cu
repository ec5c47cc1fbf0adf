// Fused small kernels of a step (decode first of all), each replacing two or three launches:
// the residual add with the RMSNorm after it, the MoE's expert combine with the residual add
// and the next RMSNorm, and RoPE of q and k in one launch. Same arithmetic, in the same order,
// as the separate kernels (add_f32, rms_norm, moe_combine, rope), so results do not change.

#define CB 4    // experts whose rows moe_combine_add_norm loads at once

// grid T, 256 threads; H % 4 == 0, H <= 4 * RN_V * 256. sum = a + b (a alone when b is null;
// not stored when sum_out is null); out = rms_norm(sum) * w.
extern "C" __global__ void __launch_bounds__(256)
    add_rms_norm(const float* a, const float* b, const void* w, int wdt, float* sum_out,
                 float* out, int H, float eps) {
    pdl_trigger();  // the GEMV after it may start loading its weights
    const i64 t = blockIdx.x;
    F4 v[RN_V];
    load_sum_f4(a + t * H, b ? b + t * H : nullptr, H, v);
    add_resid_store(nullptr, sum_out ? sum_out + t * H : nullptr, H, v);
    norm_store(v, H, eps, w, wdt, out + t * H);
}

// grid T, 256 threads; H % 4 == 0, H <= 4 * RN_V * 256. For token t: m = the sum over its
// experts in ascending expert id of y[pair] * wts[pair] (moe_combine's order), sum = resid + m
// (resid may be null: sum = m), stored; then, when nw is not null, out = rms_norm(sum) * nw.
extern "C" __global__ void __launch_bounds__(256)
    moe_combine_add_norm(const float* y, const int* ids, const float* wts, const float* resid,
                         float* sum_out, const void* nw, int nwdt, float* out, int K, int E,
                         int H, float eps) {
    pdl_trigger();  // the GEMV after it may start loading its weights
    pdl_wait();     // launched early: y comes from the kernel before
    const i64 t = blockIdx.x;
    F4 v[RN_V];
    moe_combine_chunks<CB>(t, y, ids, wts, K, E, H, v);
    add_resid_store(resid ? resid + t * H : nullptr, sum_out + t * H, H, v);
    if (nw) norm_store(v, H, eps, nw, nwdt, out + t * H);
}

// grid (T, ceil((h0 + h1) * D / 2 / 256)), 256 threads: one rotated pair (i, i + D/2) of one
// head per thread, over the heads of x0 (h0 of them) then of x1 (h1; 0 for a single tensor).
// cos and sin are scaled by mscale, as in rope.
extern "C" __global__ void __launch_bounds__(256)
    rope_pairs(const float* x0, float* out0, int h0, const float* x1, float* out1, int h1,
               const int* pos, const float* inv_freq, int D, float mscale, int* err) {
    const i64 t = blockIdx.x;
    const int half = D / 2;
    int idx = blockIdx.y * blockDim.x + threadIdx.x;
    if (idx >= (h0 + h1) * half) return;
    const float* x = x0;
    float* out = out0;
    int heads = h0;
    if (idx >= h0 * half) {
        idx -= h0 * half;
        x = x1, out = out1, heads = h1;
    }
    const int h = idx / half, i = idx - h * half;
    const i64 base = t * heads * D + (i64)h * D;
    const float xa = x[base + i], xb = x[base + i + half];
    const int p = pos[t];
    if (p < 0) {
        if (idx == 0) report_error(err, ERR_ROPE_POSITION, p, 0, (int)t);
        out[base + i] = xa;
        out[base + i + half] = xb;
        return;
    }
    const float a = (float)p * inv_freq[i];
    const float c = cosf(a) * mscale, s = sinf(a) * mscale;
    out[base + i] = xa * c - xb * s;
    out[base + i + half] = xb * c + xa * s;
}
