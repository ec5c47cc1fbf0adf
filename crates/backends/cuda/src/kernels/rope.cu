// rope: rotate each head of token t by its position, half-split pairing (i with i + D/2).
// inv_freq [D/2] comes from gptoss_core::rope on the host; cos and sin are scaled by mscale.
extern "C" __global__ void rope(const float* x, const int* pos, const float* inv_freq, float* out,
                                int heads, int D, float mscale, int* err) {
    i64 t = blockIdx.x;
    int half = D / 2;
    int p = pos[t];
    const float* xr = x + t * heads * D;
    float* o = out + t * heads * D;
    if (p < 0) {
        if (threadIdx.x == 0) report_error(err, ERR_ROPE_POSITION, p, 0, (int)t);
        for (int c = threadIdx.x; c < heads * D; c += blockDim.x) o[c] = xr[c];
        return;
    }
    float pf = (float)p;
    for (int idx = threadIdx.x; idx < heads * half; idx += blockDim.x) {
        int h = idx / half, i = idx - h * half;
        float a = pf * inv_freq[i];
        float c = cosf(a) * mscale, s = sinf(a) * mscale;
        int base = h * D;
        float xa = xr[base + i], xb = xr[base + i + half];
        o[base + i] = xa * c - xb * s;
        o[base + i + half] = xb * c + xa * s;
    }
}
