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
    var v = x[base];
    var idx = 0u;
    for (var i = l; i < p.n; i += 256u) {
        let c = x[base + i];
        if (better(c, i, v, idx)) { v = c; idx = i; }
    }
    bv[l] = v;
    bi[l] = idx;
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
