@group(0) @binding(1) var<storage, read> inp: array<f32>;
@group(0) @binding(2) var<storage, read> ids: array<i32>;
@group(0) @binding(3) var<storage, read> blocks: array<u32>;
@group(0) @binding(4) var<storage, read> scales: array<u32>;
@group(0) @binding(5) var<storage, read> bias: array<u32>;
@group(0) @binding(6) var<storage, read_write> act: array<f32>;
@group(0) @binding(7) var<storage, read_write> err: array<atomic<u32>, 4>;

var<workgroup> ex_shared: i32;

fn bias_at(i: u32) -> f32 {
    if (p.gu_bias_bf16 == 1u) { return bf16_at(bias[i >> 1u], i); }
    return bitcast<f32>(bias[i]);
}

// One workgroup: 4 (gate, up) row pairs of one (token, slot); 32 lanes per row over the groups.
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) l: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let pair = wg.y;
    let t = pair / p.k;
    if (l == 0u) { ex_shared = ids[pair]; }
    let exi = workgroupUniformLoad(&ex_shared);
    if (exi < 0 || u32(exi) >= p.e) {
        if (l == 0u && wg.x == 0u) { report(3u, u32(exi), p.e, t); }
        return;
    }
    let ex = u32(exi);
    let rows = 2u * p.inter;
    let g = p.h / 32u;
    let r = l / 32u;
    let lane = l % 32u;
    let row = wg.x * 8u + r;
    mx_row_dot(row < rows, (ex * rows + row) * g, g, t * p.h, l);
    if (lane == 0u && (r & 1u) == 0u && row + 1u < rows) {
        let gate = min(red[l] + bias_at(ex * rows + row), p.limit);
        let up = clamp(red[l + 32u] + bias_at(ex * rows + row + 1u), -p.limit, p.limit);
        let glu = gate * (1.0 / (1.0 + exp(-(gate * p.alpha))));
        act[pair * p.inter + row / 2u] = (up + 1.0) * glu;
    }
}
