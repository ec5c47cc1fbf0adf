// Shared helpers, prepended to every kernel file.

// bf16 element `i` of a buffer of packed pairs (low half first), widened exactly.
fn bf16_at(w: u32, i: u32) -> f32 {
    let h = select(w & 0xffffu, w >> 16u, (i & 1u) == 1u);
    return bitcast<f32>(h << 16u);
}

fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}
