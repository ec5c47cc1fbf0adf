// embed: table [V, H] (F32/BF16/F16) rows gathered by ids [T] -> out [T, H] f32.
extern "C" __global__ void embed(const void* table, int dt, const int* ids, float* out, int V,
                                 int H, int* err) {
    i64 t = blockIdx.x;
    int id = ids[t];
    float* o = out + t * H;
    if (id < 0 || id >= V) {
        if (threadIdx.x == 0) report_error(err, ERR_TOKEN_ID, id, V, (int)t);
        for (int c = threadIdx.x; c < H; c += blockDim.x) o[c] = 0.0f;
        return;
    }
    for (int c = threadIdx.x; c < H; c += blockDim.x) o[c] = ldf(table, dt, (i64)id * H + c);
}
