// The row dot products both expert projections share. The including shader binds `inp` (the
// activations), `blocks` and `scales` (the expert's MXFP4 rows).
var<workgroup> red: array<f32, 256>;

// Invocation `l` (32 lanes a row) dots MXFP4 row `rb` (g groups of 32 codes) with
// inp[xb .. xb + 32 g]; afterwards red[l] of the row's lane 0 holds the sum over its lanes.
// Call from uniform control flow (barriers); `row_exists` false: the row does not exist and
// contributes 0.
fn mx_row_dot(row_exists: bool, rb: u32, g: u32, xb: u32, l: u32) {
    let lane = l % 32u;
    var acc = 0.0;
    if (row_exists) {
        for (var gi = lane; gi < g; gi += 32u) {
            let si = rb + gi;
            let sc = e8m0(byte_at(scales[si >> 2u], si));
            var part = 0.0;
            for (var j = 0u; j < 4u; j++) {
                let w = blocks[si * 4u + j];
                for (var n = 0u; n < 8u; n++) {
                    part += fp4((w >> (4u * n)) & 15u) * inp[xb + gi * 32u + j * 8u + n];
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
}
