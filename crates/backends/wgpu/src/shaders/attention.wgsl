// Attention, step 2: one workgroup per (head, token), online softmax over 64-key chunks of the
// cache with the head's sink as an extra logit; GQA maps head h to kv head h / group.
struct P { t: u32, nq: u32, nkv: u32, d: u32, window: u32, cap: u32, sinks_bf16: u32, scale: f32 }
@group(0) @binding(0) var<uniform> p: P;
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
    if (ps < 0 || u32(ps) >= p.cap) { return; }
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
            let kb = j * kvw + koff;
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
            let vb = (j0 + c) * kvw + koff;
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
