// The linear for few tokens (decode), bf16 weights with k % 8 == 0; prelude: linear_params.wgsl.
// A lane group (LANES invocations) owns one row at a time, each invocation reading 16 bytes
// (8 bf16) per load, two loads in flight; the workgroup's ROWS groups walk the rows in a
// grid-stride loop, so x is staged (xstage.wgsl) once per workgroup however many rows it owns.
// TOKENS (1, or 8 with p.t <= 8) is a constant so that the accumulators stay in registers.
@group(0) @binding(1) var<storage, read> xin: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;

const ROWS: u32 = 256u / LANES;

// Eight bf16 weights (pair words, low half first) dotted with the matching x values.
fn dot8(q: vec4<u32>, xv: X8) -> f32 {
    let lo = bitcast<vec4<f32>>(q << vec4<u32>(16u));
    let hi = bitcast<vec4<f32>>(q & vec4<u32>(0xffff0000u));
    return dot(lo, xv.even) + dot(hi, xv.odd);
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) l: u32, @builtin(workgroup_id) wg: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
    let k8 = p.k / 8u;
    let staged = stage_x(0u, p.t * k8, l);
    let lane = l % LANES;
    for (var r0 = wg.x * ROWS; r0 < p.rows; r0 += nwg.x * ROWS) {
        let row = r0 + l / LANES;
        var acc: array<f32, TOKENS>;
        if (row < p.rows) {
            let wb = row * k8;
            var c = lane;
            for (; c + LANES < k8; c += 2u * LANES) {
                let q0 = w[wb + c];
                let q1 = w[wb + c + LANES];
                for (var ti = 0u; ti < TOKENS; ti++) {
                    if (ti < p.t) {
                        let xb = ti * k8 + c;
                        acc[ti] += dot8(q0, x8(staged, 0u, xb)) + dot8(q1, x8(staged, 0u, xb + LANES));
                    }
                }
            }
            if (c < k8) {
                let q0 = w[wb + c];
                for (var ti = 0u; ti < TOKENS; ti++) {
                    if (ti < p.t) { acc[ti] += dot8(q0, x8(staged, 0u, ti * k8 + c)); }
                }
            }
        }
        for (var ti = 0u; ti < TOKENS; ti++) {
            if (ti < p.t) {
                let s = lane_sum(acc[ti], l);
                if (lane == 0u && row < p.rows) { y[ti * p.n + p.n0 + row] = s + bias(p.n0 + row); }
            }
        }
    }
}
