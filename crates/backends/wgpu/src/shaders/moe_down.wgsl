@group(0) @binding(1) var<storage, read> act: array<f32>;
@group(0) @binding(2) var<storage, read> ids: array<i32>;
@group(0) @binding(3) var<storage, read> blocks: array<u32>;
@group(0) @binding(4) var<storage, read> scales: array<u32>;
@group(0) @binding(5) var<storage, read> bias: array<u32>;
@group(0) @binding(6) var<storage, read_write> y: array<f32>;

var<workgroup> red: array<f32, 256>;
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
    var acc = 0.0;
    if (row < p.h) {
        let rb = (ex * p.h + row) * g;
        for (var gi = lane; gi < g; gi += 32u) {
            let si = rb + gi;
            let sc = e8m0(byte_at(scales[si >> 2u], si));
            let xb = pair * p.inter + gi * 32u;
            var part = 0.0;
            for (var j = 0u; j < 4u; j++) {
                let w = blocks[si * 4u + j];
                for (var n = 0u; n < 8u; n++) {
                    part += fp4((w >> (4u * n)) & 15u) * act[xb + j * 8u + n];
                }
            }
            acc += part * sc;
        }
    }
    red[l] = acc;
    workgroupBarrier();
    for (var s = 16u; s > 0u; s >>= 1u) {
        if (lane < s) { red[l] += red[l + s]; }
        workgroupBarrier();
    }
    if (lane == 0u && row < p.h) { y[pair * p.h + row] = red[l] + bias_at(ex * p.h + row); }
}
