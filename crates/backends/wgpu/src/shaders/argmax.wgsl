// Index of the maximum of each row: the first NaN if any, else the first of equal maxima.
struct P { t: u32, n: u32, _a: u32, _b: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<i32>;

var<workgroup> bv: array<f32, 256>;
var<workgroup> bi: array<u32, 256>;

fn better(av: f32, ai: u32, cv: f32, ci: u32) -> bool {
    let an = is_nan(av);
    let cn = is_nan(cv);
    if (an && cn) { return ai < ci; }
    if (an) { return true; }
    if (cn) { return false; }
    if (av > cv) { return true; }
    return av == cv && ai < ci;
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) l: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let base = wg.x * p.n;
    // Four independent running bests per invocation (entries i, i + 256, i + 512, i + 768 of
    // each 1024), so four loads are in flight; `better` is a total order, so the merge order
    // does not change the answer.
    var v: array<f32, 4>;
    var idx: array<u32, 4>;
    for (var u = 0u; u < 4u; u++) { v[u] = x[base]; idx[u] = 0u; }
    for (var i = l; i < p.n; i += 1024u) {
        for (var u = 0u; u < 4u; u++) {
            let j = i + 256u * u;
            if (j < p.n) {
                let c = x[base + j];
                if (better(c, j, v[u], idx[u])) { v[u] = c; idx[u] = j; }
            }
        }
    }
    for (var u = 1u; u < 4u; u++) {
        if (better(v[u], idx[u], v[0], idx[0])) { v[0] = v[u]; idx[0] = idx[u]; }
    }
    bv[l] = v[0];
    bi[l] = idx[0];
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (l < s && better(bv[l + s], bi[l + s], bv[l], bi[l])) {
            bv[l] = bv[l + s];
            bi[l] = bi[l + s];
        }
        workgroupBarrier();
    }
    if (l == 0u) { out[wg.x] = i32(bi[0]); }
}
