// Attention body shared by attention.wgsl (one sequence's cache) and attention_paged.wgsl
// (a pool of pages shared by several sequences): the prelude defines `p` (binding 0), any
// bindings after 6, `position_ok(ti, pos)` and `key_row(ti, j)`, the cache row of key position j
// for query row ti.
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> kc: array<f32>;
@group(0) @binding(3) var<storage, read> vc: array<f32>;
@group(0) @binding(4) var<storage, read> sinks: array<u32>;
@group(0) @binding(5) var<storage, read> pos: array<i32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;

var<workgroup> qs: array<f32, 256>;
var<workgroup> pe: array<f32, 64>;
var<workgroup> ps_shared: i32;

fn sink(h: u32) -> f32 {
    if (p.sinks_bf16 == 1u) { return bf16_at(sinks[h >> 1u], h); }
    return bitcast<f32>(sinks[h]);
}

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) l: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let h = wg.x;
    let ti = wg.y;
    let d = p.d;
    let kvw = p.nkv * d;
    let koff = (h / (p.nq / p.nkv)) * d;
    if (l == 0u) { ps_shared = pos[ti]; }
    let ps = workgroupUniformLoad(&ps_shared);
    if (!position_ok(ti, ps)) { return; }
    let pp = u32(ps);
    for (var i = l; i < d; i += 64u) { qs[i] = q[(ti * p.nq + h) * d + i]; }
    workgroupBarrier();
    var lo = 0u;
    if (p.window > 0u && pp + 1u > p.window) { lo = pp + 1u - p.window; }
    var m = sink(h);
    var sum = 1.0;
    var acc: array<f32, 4>;
    for (var i = 0u; i < 4u; i++) { acc[i] = 0.0; }
    for (var j0 = lo; j0 <= pp; j0 += 64u) {
        let j = j0 + l;
        var s = 0.0;
        if (j <= pp) {
            let kb = key_row(ti, j) * kvw + koff;
            for (var i = 0u; i < d; i++) { s += qs[i] * kc[kb + i]; }
            s *= p.scale;
        }
        pe[l] = s;
        workgroupBarrier();
        let cnt = min(64u, pp + 1u - j0);
        var cm = m;
        for (var c = 0u; c < cnt; c++) { cm = max(cm, pe[c]); }
        workgroupBarrier();
        var e = 0.0;
        if (j <= pp) { e = exp(s - cm); }
        pe[l] = e;
        workgroupBarrier();
        let f = exp(m - cm);
        sum *= f;
        for (var i = 0u; i < 4u; i++) { acc[i] *= f; }
        for (var c = 0u; c < cnt; c++) {
            let ec = pe[c];
            sum += ec;
            let vb = key_row(ti, j0 + c) * kvw + koff;
            for (var i = 0u; i < 4u; i++) {
                let dd = l + i * 64u;
                if (dd < d) { acc[i] += ec * vc[vb + dd]; }
            }
        }
        m = cm;
        workgroupBarrier();
    }
    let inv = 1.0 / sum;
    for (var i = 0u; i < 4u; i++) {
        let dd = l + i * 64u;
        if (dd < d) { out[(ti * p.nq + h) * d + dd] = acc[i] * inv; }
    }
}
