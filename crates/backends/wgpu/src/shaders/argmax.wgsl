// Argmax pass 2: index of the maximum of each row (the first NaN if any, else the first of
// equal maxima) from the `parts` chunk picks argmax_part.wgsl wrote, one workgroup a row.
struct P { t: u32, n: u32, parts: u32, chunk: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> best: array<vec2<u32>>;
@group(0) @binding(2) var<storage, read_write> out: array<i32>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) l: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let base = wg.x * p.parts;
    var v = bitcast<f32>(best[base].x);
    var i = best[base].y;
    for (var c = l; c < p.parts; c += 256u) {
        let b = best[base + c];
        if (better(bitcast<f32>(b.x), b.y, v, i)) { v = bitcast<f32>(b.x); i = b.y; }
    }
    pick_in_workgroup(v, i, l);
    if (l == 0u) { out[wg.x] = i32(bi[0]); }
}
