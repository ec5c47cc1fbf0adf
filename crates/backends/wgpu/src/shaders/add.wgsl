// out = a + b elementwise: f32, or I32 with wrapping (two's complement add of the bits).
struct P { n: u32, int: u32, _b: u32, _c: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> a: array<u32>;
@group(0) @binding(2) var<storage, read> b: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.n) { return; }
    if (p.int == 1u) {
        out[i] = a[i] + b[i];
    } else {
        out[i] = bitcast<u32>(bitcast<f32>(a[i]) + bitcast<f32>(b[i]));
    }
}
