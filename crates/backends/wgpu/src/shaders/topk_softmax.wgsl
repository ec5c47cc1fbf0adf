// Router: top-k by descending value (NaN first, ties to the lower index), softmax over them.
// One workgroup per token: the row in workgroup memory, then every entry counts the entries
// that rank before it (a total order, so the counts are distinct) and the first k take their
// slot: one barrier instead of a reduction per pick.
struct P { t: u32, e: u32, k: u32, _p: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> ids: array<i32>;
@group(0) @binding(3) var<storage, read_write> wts: array<f32>;

var<workgroup> row: array<f32, 1024>;  // e <= 1024 (checked on the host)
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
    for (var i = l; i < p.e; i += 64u) {
        var rank = 0u;
        for (var j = 0u; j < p.e && rank < p.k; j++) {
            if (better(row[j], i32(j), row[i], i32(i))) { rank++; }
        }
        if (rank < p.k) { chosen[rank] = i32(i); }
    }
    workgroupBarrier();
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
