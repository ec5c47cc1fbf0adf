// Router: top-k by descending value (NaN first, ties to the lower index), softmax over them.
struct P { t: u32, e: u32, k: u32, _p: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> ids: array<i32>;
@group(0) @binding(3) var<storage, read_write> wts: array<f32>;

fn above(a: f32, b: f32) -> bool {
    if (is_nan(a)) { return !is_nan(b); }
    return a > b;
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let t = gid.x;
    if (t >= p.t) { return; }
    let base = t * p.e;
    var vals: array<f32, 64>;
    for (var s = 0u; s < p.k; s++) {
        var best = -1;
        for (var i = 0u; i < p.e; i++) {
            var taken = false;
            for (var q = 0u; q < s; q++) { if (ids[t * p.k + q] == i32(i)) { taken = true; } }
            if (taken) { continue; }
            if (best < 0 || above(x[base + i], x[base + u32(best)])) { best = i32(i); }
        }
        ids[t * p.k + s] = best;
        vals[s] = x[base + u32(best)];
    }
    var m = vals[0];
    for (var s = 1u; s < p.k; s++) { m = max(m, vals[s]); }
    var sum = 0.0;
    for (var s = 0u; s < p.k; s++) { vals[s] = exp(vals[s] - m); sum += vals[s]; }
    let inv = 1.0 / sum;
    for (var s = 0u; s < p.k; s++) { wts[t * p.k + s] = vals[s] * inv; }
}
