// Half-split rotary embedding; inv_freq (YaRN applied) comes from the host.
const C3_2PI: f32 = -2.5590313725842860e-06;

struct P { t: u32, heads: u32, d: u32, mscale: f32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> pos: array<i32>;
@group(0) @binding(3) var<storage, read> inv_freq: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> err: array<atomic<u32>, 4>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let half = p.d / 2u;
    let t = gid.y;
    let hi = gid.x;
    if (t >= p.t || hi >= p.heads * half) { return; }
    let ps = pos[t];
    if (ps < 0) {
        if (hi == 0u) { report(4u, u32(ps), 0u, t); }
        return;
    }
    let head = hi / half;
    let i = hi % half;
    // The angle as the host computes it (an f32 product), reduced to [-pi, pi] by subtracting
    // k * 2pi in three parts (Cody-Waite): C1 and C2 have few significant bits, so k * C1 and
    // k * C2 are exact in f32 for k < 2^16 (positions up to ~400000). GPUs' native cos/sin are
    // accurate only near [-pi, pi]: unreduced, position 100000 was off by 2e-2 on NVIDIA.
    let a = f32(ps) * inv_freq[i];
    let k = round(a * 0.15915494309189535);
    let r = ((a - k * 6.28125) - k * 0.0019378662109375) - k * C3_2PI;
    let c = cos(r) * p.mscale;
    let s = sin(r) * p.mscale;
    let base = t * p.heads * p.d + head * p.d;
    let x0 = x[base + i];
    let x1 = x[base + i + half];
    out[base + i] = x0 * c - x1 * s;
    out[base + i + half] = x1 * c + x0 * s;
}
