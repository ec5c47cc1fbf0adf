// Attention body shared by attention.wgsl (one sequence's cache) and attention_paged.wgsl
// (a pool of pages shared by several sequences): the prelude defines `p` (binding 0: t, nq,
// nkv, d, window, sinks_bf16, scale, splits, ks, qlog), any bindings after 6,
// `position_ok(ti, pos)` and `key_row(ti, j)`, the cache row of key position j for row ti.
//
// One workgroup per (query head h, token ti, split): the split's keys (ks of the row's
// [lo, pos], lo from the sliding window) in chunks of 64. Scores: 4 lanes a key, each
// dotting every 4th vec4 of q with the key row (a warp reads 8 rows x 64 contiguous bytes).
// Values: lanes over the row's vec4s (2^qlog of them, d/4 used) x 256 >> qlog key groups,
// each group an online softmax (max, sum, vec4 acc) over its keys of the chunk; the groups
// are merged at the end. With one split the head's sink joins the denominator and the row
// is written; with several, each split writes (max, sum, acc[d]) at
// out[((ti * nq + h) * splits + split) * (d + 2)] and attention_merge.wgsl combines them.
@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> kc: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> vc: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> sinks: array<u32>;
@group(0) @binding(5) var<storage, read> pos: array<i32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;

const CHUNK: u32 = 64u;
const NEG: f32 = -1e30;

var<workgroup> qs: array<vec4<f32>, 64>;
var<workgroup> red: array<f32, 256>;
var<workgroup> accs: array<vec4<f32>, 256>;
var<workgroup> ms: array<f32, 64>;
var<workgroup> ss: array<f32, 64>;
var<workgroup> ps_shared: i32;

fn sink(h: u32) -> f32 {
    if (p.sinks_bf16 == 1u) { return bf16_at(sinks[h >> 1u], h); }
    return bitcast<f32>(sinks[h]);
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) l: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let h = wg.x % p.nq;
    let split = wg.x / p.nq;
    let ti = wg.y;
    let dq = p.d / 4u;
    let kvq = p.nkv * dq;
    let koff = (h / (p.nq / p.nkv)) * dq;
    let row = ti * p.nq + h;
    if (l == 0u) { ps_shared = pos[ti]; }
    let ps = workgroupUniformLoad(&ps_shared);
    let ok = position_ok(ti, ps);
    if (!ok && p.splits == 1u) { return; }
    // This split's keys [start, end) (empty where the row has fewer keys).
    var start = 0u;
    var end = 0u;
    if (ok) {
        let pp = u32(ps);
        var lo = 0u;
        if (p.window > 0u && pp + 1u > p.window) { lo = pp + 1u - p.window; }
        start = min(lo + split * p.ks, pp + 1u);
        end = min(start + p.ks, pp + 1u);
    }
    for (var i = l; i < dq; i += 256u) { qs[i] = q[row * dq + i]; }
    workgroupBarrier();
    let pq = l & ((1u << p.qlog) - 1u);
    let g = l >> p.qlog;
    let groups = 256u >> p.qlog;
    var m = NEG;
    var sum = 0.0;
    var acc = vec4<f32>(0.0);
    for (var j0 = start; j0 < end; j0 += CHUNK) {
        let j = j0 + l / 4u;
        var s = 0.0;
        if (j < end) {
            let kb = key_row(ti, j) * kvq + koff;
            for (var c = l % 4u; c < dq; c += 4u) { s += dot(qs[c], kc[kb + c]); }
        }
        red[l] = s;
        workgroupBarrier();
        let cnt = min(CHUNK, end - j0);
        for (var kk = g; kk < cnt; kk += groups) {
            let r = 4u * kk;
            let sc = ((red[r] + red[r + 1u]) + (red[r + 2u] + red[r + 3u])) * p.scale;
            let mn = max(m, sc);
            let f = exp(m - mn);
            let e = exp(sc - mn);
            sum = sum * f + e;
            var v = vec4<f32>(0.0);
            if (pq < dq) { v = vc[key_row(ti, j0 + kk) * kvq + koff + pq]; }
            acc = acc * f + e * v;
            m = mn;
        }
        workgroupBarrier();
    }
    accs[l] = acc;
    if (pq == 0u) {
        ms[g] = m;
        ss[g] = sum;
    }
    workgroupBarrier();
    if (l >= dq) { return; }
    var mm = NEG;
    for (var gg = 0u; gg < groups; gg++) { mm = max(mm, ms[gg]); }
    var tot = 0.0;
    var a = vec4<f32>(0.0);
    for (var gg = 0u; gg < groups; gg++) {
        let f = exp(ms[gg] - mm);
        tot += ss[gg] * f;
        a += accs[(gg << p.qlog) + l] * f;
    }
    if (p.splits == 1u) {
        let sk = sink(h);
        let m2 = max(mm, sk);
        let f = exp(mm - m2);
        let o = a * (f / (tot * f + exp(sk - m2)));
        for (var i = 0u; i < 4u; i++) { out[row * p.d + 4u * l + i] = o[i]; }
    } else {
        let base = (row * p.splits + split) * (p.d + 2u);
        if (l == 0u) {
            out[base] = mm;
            out[base + 1u] = tot;
        }
        for (var i = 0u; i < 4u; i++) { out[base + 2u + 4u * l + i] = a[i]; }
    }
}
