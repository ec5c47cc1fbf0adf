// out [B, N] = rows rows[b] of x [T, N] (each sequence's last row of a batched step).
struct P { b: u32, n: u32, t: u32, _p: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> rows: array<i32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read_write> err: array<atomic<u32>, 4>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    let b = gid.y;
    if (b >= p.b || i >= p.n) { return; }
    let r = rows[b];
    if (r < 0 || u32(r) >= p.t) {
        if (i == 0u) { report(5u, u32(r), p.t, b); }
        return;
    }
    out[b * p.n + i] = x[u32(r) * p.n + i];
}
