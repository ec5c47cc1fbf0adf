// add (f32 and wrapping i32), last_row, copy_f32 and local_experts.
extern "C" __global__ void add_f32(const float* a, const float* b, float* out, i64 n) {
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = a[i] + b[i];
}

extern "C" __global__ void add_i32(const int* a, const int* b, int* out, i64 n) {
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = (int)((u32)a[i] + (u32)b[i]);
}

// out [1, N] = x [T, N] row T-1.
extern "C" __global__ void last_row(const float* x, float* out, int T, int N) {
    pdl_trigger();  // lm_head's GEMV may start loading its weights
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < N) out[i] = x[(i64)(T - 1) * N + i];
}

// out = x (an all-reduce over a group of one).
extern "C" __global__ void copy_f32(const float* x, float* out, i64 n) {
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = x[i];
}

// Expert parallelism: global expert ids to this shard's (first..first+count), -1 elsewhere.
extern "C" __global__ void local_experts(const int* ids, int* out, i64 n, int first, int count) {
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        int e = ids[i] - first;
        out[i] = (e >= 0 && e < count) ? e : -1;
    }
}

// out [B, N] = x rows rows[b] (each sequence's last row of a batched step).
extern "C" __global__ void gather_rows(const float* x, const int* rows, float* out, int T, int N,
                                       int* err) {
    i64 b = blockIdx.y;
    int r = rows[b];
    if (r < 0 || r >= T) {
        if (blockIdx.x == 0 && threadIdx.x == 0) report_error(err, ERR_POSITION, r, T, (int)b);
        return;
    }
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < N) out[b * N + i] = x[(i64)r * N + i];
}
