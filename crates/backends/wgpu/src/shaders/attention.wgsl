// Attention, step 2: one workgroup per (head, token), online softmax over 64-key chunks of the
// cache with the head's sink as an extra logit; GQA maps head h to kv head h / group.
struct P { t: u32, nq: u32, nkv: u32, d: u32, window: u32, cap: u32, sinks_bf16: u32, scale: f32 }
@group(0) @binding(0) var<uniform> p: P;

fn position_ok(ti: u32, ps: i32) -> bool { return ps >= 0 && u32(ps) < p.cap; }
fn key_row(ti: u32, j: u32) -> u32 { return j; }
