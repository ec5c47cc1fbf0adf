@group(0) @binding(1) var<storage, read> y: array<f32>;
@group(0) @binding(2) var<storage, read> wts: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    let t = gid.y;
    if (c >= p.h || t >= p.t) { return; }
    var s = 0.0;
    for (var j = 0u; j < p.k; j++) {
        let pair = t * p.k + j;
        s += y[pair * p.h + c] * wts[pair];
    }
    out[t * p.h + c] = s;
}
