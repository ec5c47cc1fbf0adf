// gate_up + clamped SwiGLU (moe_rows.wgsl): unit u is the (gate, up) row pair (2u, 2u + 1) of
// the expert; act[pair, u] = (up + 1) * gate * sigmoid(alpha * gate), clamped by limit.
@group(0) @binding(5) var<storage, read> bias: array<u32>;
@group(0) @binding(6) var<storage, read_write> act: array<f32>;
@group(0) @binding(7) var<storage, read_write> err: array<atomic<u32>, 4>;

fn bias_at(i: u32) -> f32 {
    if (p.gu_bias_bf16 == 1u) { return bf16_at(bias[i >> 1u], i); }
    return bitcast<f32>(bias[i]);
}

fn units() -> u32 { return p.inter; }
fn groups() -> u32 { return p.h / 32u; }
fn x_chunk(pair: u32) -> u32 { return (pair / p.k) * (p.h / 8u); }

fn bad_expert(id: i32, pair: u32, first: bool) {
    if (first) { report(3u, u32(id), p.e, pair / p.k); }
}

fn emit(pair: u32, ex: u32, u: u32, s: vec2<f32>) {
    let r = ex * 2u * p.inter + 2u * u;
    let gate = min(s.x + bias_at(r), p.limit);
    let up = clamp(s.y + bias_at(r + 1u), -p.limit, p.limit);
    let glu = gate * (1.0 / (1.0 + exp(-(gate * p.alpha))));
    act[pair * p.inter + u] = (up + 1.0) * glu;
}
