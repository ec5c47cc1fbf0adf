// Mixture of MXFP4 experts. The packed blocks (u32 words, 8 E2M1 codes each, low nibble first)
// and E8M0 scale bytes are decoded here, in registers: no dequantized copy of any expert.
// Three entry points: gate_up (+ clamped SwiGLU) per (token, slot), down per (token, slot),
// combine (routing-weighted sum over the slots).
struct P {
    t: u32, k: u32, h: u32, inter: u32, e: u32, gu_bias_bf16: u32, dn_bias_bf16: u32, _p: u32,
    limit: f32, alpha: f32, _q: u32, _r: u32,
}
@group(0) @binding(0) var<uniform> p: P;

// Value of one E2M1 code: sign bit 3, exponent bits 2..1 (bias 1), mantissa bit 0.
fn fp4(c: u32) -> f32 {
    let e = (c >> 1u) & 3u;
    let m = f32(c & 1u);
    var v = m * 0.5;
    if (e > 0u) { v = (1.0 + 0.5 * m) * f32(1u << (e - 1u)); }
    return select(v, -v, (c & 8u) != 0u);
}

// 2^(s-127) of an E8M0 byte.
fn e8m0(s: u32) -> f32 {
    return ldexp(1.0, i32(s) - 127);
}

fn byte_at(w: u32, i: u32) -> u32 {
    return (w >> ((i & 3u) * 8u)) & 0xffu;
}
