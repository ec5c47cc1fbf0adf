// Shared by the two argmax passes: the order they pick by and a workgroup's pick of 256.
var<workgroup> bv: array<f32, 256>;
var<workgroup> bi: array<u32, 256>;

// Whether (av, ai) comes first: NaN first (the lowest index among NaNs), then the larger
// value, then the lower index. A total order, so the order of merging cannot change the pick.
fn better(av: f32, ai: u32, cv: f32, ci: u32) -> bool {
    let an = is_nan(av);
    let cn = is_nan(cv);
    if (an && cn) { return ai < ci; }
    if (an) { return true; }
    if (cn) { return false; }
    if (av > cv) { return true; }
    return av == cv && ai < ci;
}

// The workgroup's best of every invocation's (v, i), in bv[0] / bi[0] for all afterwards.
fn pick_in_workgroup(v: f32, i: u32, l: u32) {
    bv[l] = v;
    bi[l] = i;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (l < s && better(bv[l + s], bi[l + s], bv[l], bi[l])) {
            bv[l] = bv[l + s];
            bi[l] = bi[l + s];
        }
        workgroupBarrier();
    }
}
