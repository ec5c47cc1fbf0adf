// y = x / sqrt(mean(x^2) + eps) * w, one workgroup per row. A row kernel (the prelude's
// LANES and lane_sum): the sum of squares is lane-group sums, then one pass over them.
struct P { t: u32, h: u32, bf16: u32, eps: f32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

var<workgroup> part: array<f32, 256u / LANES>;

fn weight(i: u32) -> f32 {
    if (p.bf16 == 1u) { return bf16_at(w[i >> 1u], i); }
    return bitcast<f32>(w[i]);
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) l: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let row = wg.x;
    let base = row * p.h;
    var s = 0.0;
    for (var i = l; i < p.h; i += 256u) { let v = x[base + i]; s += v * v; }
    let group = lane_sum(s, l);
    if (l % LANES == 0u) { part[l / LANES] = group; }
    workgroupBarrier();
    var total = 0.0;
    for (var i = 0u; i < 256u / LANES; i++) { total += part[i]; }
    let inv = 1.0 / sqrt(total / f32(p.h) + p.eps);
    for (var i = l; i < p.h; i += 256u) { out[base + i] = weight(i) * (x[base + i] * inv); }
}
