// Mixture of MXFP4 experts. The packed blocks (u32 words, 8 E2M1 codes each, low nibble first)
// and E8M0 scale bytes are decoded here, in registers: no dequantized copy of any expert.
// Three kernels: gate_up (+ clamped SwiGLU) and down per (token, slot) (moe_rows.wgsl), and
// combine (the routing-weighted sum over a token's experts).
struct P {
    t: u32, k: u32, h: u32, inter: u32, e: u32, gu_bias_bf16: u32, dn_bias_bf16: u32, _p: u32,
    limit: f32, alpha: f32, _q: u32, _r: u32,
}
@group(0) @binding(0) var<uniform> p: P;

// Values of four E2M1 codes: sign bit 3, exponent bits 2..1 (bias 1), mantissa bit 0, built
// as f32 bits (exponent e - 1 + 127, the mantissa bit on top; e == 0: 0 or 0.5).
fn fp4x4(c: vec4<u32>) -> vec4<f32> {
    let e = (c >> vec4<u32>(1u)) & vec4<u32>(3u);
    let m = c & vec4<u32>(1u);
    let normal = ((e + vec4<u32>(126u)) << vec4<u32>(23u)) | (m << vec4<u32>(22u));
    let small = m * 0x3f000000u;
    let sign = (c & vec4<u32>(8u)) << vec4<u32>(28u);
    return bitcast<vec4<f32>>(select(normal, small, e == vec4<u32>(0u)) | sign);
}

// 2^(s-127) of an E8M0 byte.
fn e8m0(s: u32) -> f32 {
    return ldexp(1.0, i32(s) - 127);
}

fn byte_at(w: u32, i: u32) -> u32 {
    return (w >> ((i & 3u) * 8u)) & 0xffu;
}
