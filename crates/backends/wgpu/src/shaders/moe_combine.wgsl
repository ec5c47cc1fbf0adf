// out[t, c] = sum over the token's slots of weight * y[slot, c], taken in ascending expert id
// (the order of the cpu backend and transformers' loop over experts).
@group(0) @binding(1) var<storage, read> y: array<f32>;
@group(0) @binding(2) var<storage, read> wts: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> ids: array<i32>;

// The slot of token t with the smallest expert id above `after`, or p.k when none is left.
fn next_slot(t: u32, after: i32) -> u32 {
    var best = p.k;
    for (var j = 0u; j < p.k; j++) {
        let id = ids[t * p.k + j];
        if (id > after && (best == p.k || id < ids[t * p.k + best])) { best = j; }
    }
    return best;
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    let t = gid.y;
    if (c >= p.h || t >= p.t) { return; }
    var s = 0.0;
    var after = -1;
    for (var n = 0u; n < p.k; n++) {
        let j = next_slot(t, after);
        if (j == p.k) { break; }
        let pair = t * p.k + j;
        s += y[pair * p.h + c] * wts[pair];
        after = ids[pair];
    }
    out[t * p.h + c] = s;
}
