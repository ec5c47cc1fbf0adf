// rms_norm: y = w * (x * (1 / sqrt(mean(x^2) + eps))), one block per row, all in f32.
extern "C" __global__ void rms_norm(const float* x, const void* w, int wdt, float* out, int H,
                                    float eps) {
    i64 t = blockIdx.x;
    const float* xr = x + t * H;
    float* o = out + t * H;
    float s = 0.0f;
    for (int c = threadIdx.x; c < H; c += blockDim.x) {
        float v = xr[c];
        s += v * v;
    }
    s = block_sum(s);
    float var = s / (float)H;
    float inv = 1.0f / sqrtf(var + eps);
    for (int c = threadIdx.x; c < H; c += blockDim.x) o[c] = ldf(w, wdt, c) * (xr[c] * inv);
}
