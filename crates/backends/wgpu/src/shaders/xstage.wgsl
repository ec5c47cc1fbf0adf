// Activations for the row kernels (gemv, moe), read as 8-value chunks split into the even and
// the odd values: the order of a bf16 pair word's low/high halves and of an MXFP4 byte's
// low/high nibbles. The including shader binds `xin` (f32 activations as vec4s). When the
// values fit (XS_QUADS vec4s) they are staged once per workgroup in that split order.
var<workgroup> xs: array<vec4<f32>, XS_QUADS>;

struct X8 { even: vec4<f32>, odd: vec4<f32> }

// Stage chunks [c0, c0 + n8) of xin; false (nothing staged) when they do not fit. Call from
// workgroup-uniform control flow.
fn stage_x(c0: u32, n8: u32, l: u32) -> bool {
    if (2u * n8 > XS_QUADS) { return false; }
    for (var c = l; c < n8; c += 256u) {
        let a = xin[2u * (c0 + c)];
        let b = xin[2u * (c0 + c) + 1u];
        xs[2u * c] = vec4<f32>(a.x, a.z, b.x, b.z);
        xs[2u * c + 1u] = vec4<f32>(a.y, a.w, b.y, b.w);
    }
    workgroupBarrier();
    return true;
}

// Chunk c0 + c of xin (c relative to the staged range).
fn x8(staged: bool, c0: u32, c: u32) -> X8 {
    if (staged) { return X8(xs[2u * c], xs[2u * c + 1u]); }
    let a = xin[2u * (c0 + c)];
    let b = xin[2u * (c0 + c) + 1u];
    return X8(vec4<f32>(a.x, a.z, b.x, b.z), vec4<f32>(a.y, a.w, b.y, b.w));
}
