// Attention, step 2: one workgroup per (head, token), online softmax over 64-key chunks of the
// cache with the head's sink as an extra logit; GQA maps head h to kv head h / group.
struct P { t: u32, nq: u32, nkv: u32, d: u32, window: u32, cap: u32, sinks_bf16: u32, scale: f32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> kc: array<f32>;
@group(0) @binding(3) var<storage, read> vc: array<f32>;
@group(0) @binding(4) var<storage, read> sinks: array<u32>;
@group(0) @binding(5) var<storage, read> pos: array<i32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;

fn position_ok(ti: u32, ps: i32) -> bool { return ps >= 0 && u32(ps) < p.cap; }
fn key_row(ti: u32, j: u32) -> u32 { return j; }
