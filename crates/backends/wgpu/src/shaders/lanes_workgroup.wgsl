// The sum over a lane group (LANES consecutive invocations), without subgroup operations: a
// tree in workgroup memory. Call from workgroup-uniform control flow (barriers).
var<workgroup> lane_red: array<f32, 256>;

fn lane_sum(v: f32, l: u32) -> f32 {
    let lane = l % LANES;
    lane_red[l] = v;
    workgroupBarrier();
    for (var s = LANES / 2u; s > 0u; s >>= 1u) {
        if (lane < s) { lane_red[l] += lane_red[l + s]; }
        workgroupBarrier();
    }
    let total = lane_red[l - lane];
    workgroupBarrier();
    return total;
}
