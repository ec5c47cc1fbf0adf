// down (moe_rows.wgsl): unit u is output rows (2u, 2u + 1) of the expert; y[pair, :] holds
// the pair's expert output, bias included (weighted and summed by moe_combine.wgsl).
@group(0) @binding(5) var<storage, read> bias: array<u32>;
@group(0) @binding(6) var<storage, read_write> y: array<f32>;

fn bias_at(i: u32) -> f32 {
    if (p.dn_bias_bf16 == 1u) { return bf16_at(bias[i >> 1u], i); }
    return bitcast<f32>(bias[i]);
}

fn units() -> u32 { return p.h / 2u; }
fn groups() -> u32 { return p.inter / 32u; }
fn x_chunk(pair: u32) -> u32 { return pair * (p.inter / 8u); }

// gate_up reports the bad id.
fn bad_expert(id: i32, pair: u32, first: bool) {}

fn emit(pair: u32, ex: u32, u: u32, s: vec2<f32>) {
    let r = ex * p.h + 2u * u;
    y[pair * p.h + 2u * u] = s.x + bias_at(r);
    y[pair * p.h + 2u * u + 1u] = s.y + bias_at(r + 1u);
}
