// Attention, step 3 where the keys were split over workgroups: one workgroup per (head,
// token) combines the splits' (max, sum, acc[d]) with the head's sink in the denominator.
struct P { t: u32, nq: u32, d: u32, splits: u32, sinks_bf16: u32, _a: u32, _b: u32, _c: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> part: array<f32>;
@group(0) @binding(2) var<storage, read> sinks: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

fn sink(h: u32) -> f32 {
    if (p.sinks_bf16 == 1u) { return bf16_at(sinks[h >> 1u], h); }
    return bitcast<f32>(sinks[h]);
}

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) l: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let h = wg.x;
    let row = wg.y * p.nq + h;
    let stride = p.d + 2u;
    let base = row * p.splits * stride;
    let sk = sink(h);
    var mm = sk;
    for (var s = 0u; s < p.splits; s++) { mm = max(mm, part[base + s * stride]); }
    var tot = exp(sk - mm);
    for (var s = 0u; s < p.splits; s++) {
        let b = base + s * stride;
        tot += part[b + 1u] * exp(part[b] - mm);
    }
    let inv = 1.0 / tot;
    for (var dd = l; dd < p.d; dd += 64u) {
        var a = 0.0;
        for (var s = 0u; s < p.splits; s++) {
            let b = base + s * stride;
            a += part[b + 2u + dd] * exp(part[b] - mm);
        }
        out[row * p.d + dd] = a * inv;
    }
}
