// The kernel both expert projections share: workgroup (x, pair) walks the units (two rows
// each) of (token, slot) pair `pair` in a grid-stride loop, a lane group (LANES invocations)
// a unit at a time, 16 bytes (one 32-code group) per load. The pair's activations are staged
// once (xstage.wgsl), and the two rows of a unit share every x load. The including shader
// binds bias (5) and its output (6), and defines units() (units per pair), groups() (MXFP4
// groups per row), x_chunk(pair) (the pair's first 8-value chunk of xin), bad_expert(id,
// pair, first) and emit(pair, ex, unit, sums of its two rows).
@group(0) @binding(1) var<storage, read> xin: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> ids: array<i32>;
@group(0) @binding(3) var<storage, read> blocks: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read> scales: array<u32>;

const ROWS: u32 = 256u / LANES;
var<workgroup> ex_shared: i32;

fn scale(si: u32) -> f32 {
    return e8m0(byte_at(scales[si >> 2u], si));
}

// Codes k and k + 4 of a word as an f16 pair: e1 e0 m moved to bits 9..11 / 25..27 (`em`
// shifted), the signs to 15 / 31 (`sg` shifted). Read as f16 that is each code's value times
// 2^-14, the e = 0 codes subnormal (so only where the device keeps them: f16_probe.rs).
fn fp4_pair(em: u32, sg: u32) -> vec2<f32> {
    return unpack2x16float((em & 0x0e000e00u) | (sg & 0x80008000u));
}

// Eight codes (a u32 word, low nibble first) dotted with the matching x values; times 2^-14
// with FP4_F16 (mx_dot2 scales its sums back).
fn dot_fp4x8(q: u32, xv: X8) -> f32 {
    if (FP4_F16) {
        let c04 = fp4_pair(q << 9u, q << 12u);
        let c15 = fp4_pair(q << 5u, q << 8u);
        let c26 = fp4_pair(q << 1u, q << 4u);
        let c37 = fp4_pair(q >> 3u, q);
        return dot(vec4<f32>(c04.x, c26.x, c04.y, c26.y), xv.even)
            + dot(vec4<f32>(c15.x, c37.x, c15.y, c37.y), xv.odd);
    }
    let v = vec4<u32>(q);
    let even = fp4x4((v >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(15u));
    let odd = fp4x4((v >> vec4<u32>(4u, 12u, 20u, 28u)) & vec4<u32>(15u));
    return dot(even, xv.even) + dot(odd, xv.odd);
}

// This lane's share of the dots of the rows whose first groups are rb0 and rb1 with x.
fn mx_dot2(rb0: u32, rb1: u32, g: u32, lane: u32, staged: bool, c0: u32) -> vec2<f32> {
    var acc = vec2<f32>(0.0);
    for (var gi = lane; gi < g; gi += LANES) {
        let q0 = blocks[rb0 + gi];
        let q1 = blocks[rb1 + gi];
        var s = vec2<f32>(0.0);
        for (var j = 0u; j < 4u; j++) {
            let xv = x8(staged, c0, gi * 4u + j);
            s += vec2<f32>(dot_fp4x8(q0[j], xv), dot_fp4x8(q1[j], xv));
        }
        acc += s * vec2<f32>(scale(rb0 + gi), scale(rb1 + gi));
    }
    // Power-of-two scaling, exact (the sums are far from f32's range ends).
    return select(acc, acc * 16384.0, FP4_F16);
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) l: u32, @builtin(workgroup_id) wg: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
    let pair = wg.y;
    if (l == 0u) { ex_shared = ids[pair]; }
    let id = workgroupUniformLoad(&ex_shared);
    if (id < 0 || u32(id) >= p.e) {
        bad_expert(id, pair, l == 0u && wg.x == 0u);
        return;
    }
    let ex = u32(id);
    let g = groups();
    let c0 = x_chunk(pair);
    let staged = stage_x(c0, g * 4u, l);
    let lane = l % LANES;
    let rows = 2u * units();
    for (var u0 = wg.x * ROWS; u0 < units(); u0 += nwg.x * ROWS) {
        let u = u0 + l / LANES;
        var s = vec2<f32>(0.0);
        if (u < units()) {
            let rb = (ex * rows + 2u * u) * g;
            s = mx_dot2(rb, rb + g, g, lane, staged, c0);
        }
        let sums = vec2<f32>(lane_sum(s.x, l), lane_sum(s.y, l));
        if (lane == 0u && u < units()) { emit(pair, ex, u, sums); }
    }
}
