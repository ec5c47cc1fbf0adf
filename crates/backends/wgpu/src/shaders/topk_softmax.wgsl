// Router: top-k by descending value (NaN first, ties to the lower index), softmax over them.
// One workgroup per token: the row in workgroup memory, then k passes, each a tree reduction
// of the best untaken entry over the 64 invocations.
struct P { t: u32, e: u32, k: u32, _p: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> ids: array<i32>;
@group(0) @binding(3) var<storage, read_write> wts: array<f32>;

var<workgroup> row: array<f32, 1024>;  // e <= 1024 (checked on the host)
var<workgroup> rv: array<f32, 64>;
var<workgroup> ri: array<i32, 64>;
var<workgroup> chosen: array<i32, 64>;  // k <= 64

fn above(a: f32, b: f32) -> bool {
    if (is_nan(a)) { return !is_nan(b); }
    return a > b;
}

// (v, i) ranks before (bv, bi): higher value (NaN above all), ties to the lower index.
fn better(v: f32, i: i32, bv: f32, bi: i32) -> bool {
    if (i < 0) { return false; }
    if (bi < 0) { return true; }
    if (above(v, bv)) { return true; }
    if (above(bv, v)) { return false; }
    return i < bi;
}

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) l: u32, @builtin(workgroup_id) wg: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
    // Tokens past the grid's x limit continue in y (long prompts).
    let t = wg.y * nwg.x + wg.x;
    if (t >= p.t) { return; }
    let base = t * p.e;
    for (var i = l; i < p.e; i += 64u) { row[i] = x[base + i]; }
    workgroupBarrier();
    for (var s = 0u; s < p.k; s++) {
        var bv = 0.0;
        var bi = -1;
        for (var i = l; i < p.e; i += 64u) {
            var taken = false;
            for (var q = 0u; q < s; q++) { if (chosen[q] == i32(i)) { taken = true; } }
            if (!taken && better(row[i], i32(i), bv, bi)) { bv = row[i]; bi = i32(i); }
        }
        rv[l] = bv;
        ri[l] = bi;
        workgroupBarrier();
        for (var h = 32u; h > 0u; h >>= 1u) {
            if (l < h && better(rv[l + h], ri[l + h], rv[l], ri[l])) {
                rv[l] = rv[l + h];
                ri[l] = ri[l + h];
            }
            workgroupBarrier();
        }
        if (l == 0u) { chosen[s] = ri[0]; }
        workgroupBarrier();
    }
    if (l != 0u) { return; }
    var m = row[u32(max(chosen[0], 0))];
    for (var s = 1u; s < p.k; s++) { m = max(m, row[u32(max(chosen[s], 0))]); }
    var sum = 0.0;
    var vals: array<f32, 64>;
    for (var s = 0u; s < p.k; s++) {
        vals[s] = exp(row[u32(max(chosen[s], 0))] - m);
        sum += vals[s];
    }
    let inv = 1.0 / sum;
    for (var s = 0u; s < p.k; s++) {
        ids[t * p.k + s] = chosen[s];
        wts[t * p.k + s] = vals[s] * inv;
    }
}
