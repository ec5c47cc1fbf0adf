// y[t, n] = sum_k x[t, k] w[n, k] + b[n]. The weight may be one part of a row-split matrix:
// rows [n0, n0 + rows) of the full output. Shared by gemm (linear.wgsl) and gemv (gemv.wgsl),
// which bind x (1) and w (2) each in their own way.
struct P { t: u32, n: u32, k: u32, bf16: u32, has_bias: u32, bias_bf16: u32, n0: u32, rows: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(3) var<storage, read> b: array<u32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

fn bias(n: u32) -> f32 {
    if (p.has_bias == 0u) { return 0.0; }
    if (p.bias_bf16 == 1u) { return bf16_at(b[n >> 1u], n); }
    return bitcast<f32>(b[n]);
}
