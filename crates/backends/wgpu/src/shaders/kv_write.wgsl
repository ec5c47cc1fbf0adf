// Attention, step 1: k/v rows of row t go to cache row pos[t] (its position, or its slot in a
// paged pool).
struct P { t: u32, kvw: u32, cap: u32, _p: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> k: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read> pos: array<i32>;
@group(0) @binding(4) var<storage, read_write> kc: array<f32>;
@group(0) @binding(5) var<storage, read_write> vc: array<f32>;
@group(0) @binding(6) var<storage, read_write> err: array<atomic<u32>, 4>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    let t = gid.y;
    if (t >= p.t || c >= p.kvw) { return; }
    let ps = pos[t];
    if (ps < 0 || u32(ps) >= p.cap) {
        if (c == 0u) { report(2u, u32(ps), p.cap, t); }
        return;
    }
    kc[u32(ps) * p.kvw + c] = k[t * p.kvw + c];
    vc[u32(ps) * p.kvw + c] = v[t * p.kvw + c];
}
