// Argmax pass 1: workgroup (c, row) picks the best of chunk c (`chunk` entries) of the row
// and writes it (value bits, index) to best[row * parts + c]; argmax.wgsl picks among those.
// Many workgroups a row, so a 201k-entry vocabulary row is read by the whole GPU.
struct P { t: u32, n: u32, parts: u32, chunk: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> best: array<vec2<u32>>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) l: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let row = wg.y;
    let base = row * p.n;
    let start = wg.x * p.chunk;
    let end = min(p.n, start + p.chunk);
    // Four independent running bests per invocation, so four loads are in flight.
    var v: array<f32, 4>;
    var idx: array<u32, 4>;
    for (var u = 0u; u < 4u; u++) { v[u] = x[base + start]; idx[u] = start; }
    for (var i = start + l; i < end; i += 1024u) {
        for (var u = 0u; u < 4u; u++) {
            let j = i + 256u * u;
            if (j < end) {
                let c = x[base + j];
                if (better(c, j, v[u], idx[u])) { v[u] = c; idx[u] = j; }
            }
        }
    }
    for (var u = 1u; u < 4u; u++) {
        if (better(v[u], idx[u], v[0], idx[0])) { v[0] = v[u]; idx[0] = idx[u]; }
    }
    pick_in_workgroup(v[0], idx[0], l);
    if (l == 0u) { best[row * p.parts + wg.x] = vec2<u32>(bitcast<u32>(bv[0]), bi[0]); }
}
