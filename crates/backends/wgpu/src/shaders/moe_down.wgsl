@group(0) @binding(1) var<storage, read> inp: array<f32>;
@group(0) @binding(2) var<storage, read> ids: array<i32>;
@group(0) @binding(3) var<storage, read> blocks: array<u32>;
@group(0) @binding(4) var<storage, read> scales: array<u32>;
@group(0) @binding(5) var<storage, read> bias: array<u32>;
@group(0) @binding(6) var<storage, read_write> y: array<f32>;

var<workgroup> ex_shared: i32;

fn bias_at(i: u32) -> f32 {
    if (p.dn_bias_bf16 == 1u) { return bf16_at(bias[i >> 1u], i); }
    return bitcast<f32>(bias[i]);
}

// One workgroup: 8 output rows of one (token, slot); 32 lanes per row over the groups.
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) l: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let pair = wg.y;
    if (l == 0u) { ex_shared = ids[pair]; }
    let exi = workgroupUniformLoad(&ex_shared);
    if (exi < 0 || u32(exi) >= p.e) { return; }
    let ex = u32(exi);
    let g = p.inter / 32u;
    let r = l / 32u;
    let lane = l % 32u;
    let row = wg.x * 8u + r;
    mx_row_dot(row < p.h, (ex * p.h + row) * g, g, pair * p.inter, l);
    if (lane == 0u && row < p.h) { y[pair * p.h + row] = red[l] + bias_at(ex * p.h + row); }
}
