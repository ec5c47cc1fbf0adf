// The sum over a lane group (LANES consecutive invocations) by subgroup shuffles: LANES divides
// the adapter's smallest subgroup size, so a lane group lies inside one subgroup, and the xor
// butterfly (masks below LANES) stays inside the group. Call with the whole group active.
fn lane_sum(v: f32, l: u32) -> f32 {
    var s = v;
    for (var m = LANES / 2u; m > 0u; m >>= 1u) { s += subgroupShuffleXor(s, m); }
    return s;
}
