// Attention, step 2, over one sequence's cache (the body: attention_body.wgsl). splits, ks:
// the key range split over workgroups (flash-decoding), qlog: log2 of a row's vec4s rounded up.
struct P { t: u32, nq: u32, nkv: u32, d: u32, window: u32, cap: u32, sinks_bf16: u32, scale: f32,
           splits: u32, ks: u32, qlog: u32, _a: u32 }
@group(0) @binding(0) var<uniform> p: P;

fn position_ok(ti: u32, ps: i32) -> bool { return ps >= 0 && u32(ps) < p.cap; }
fn key_row(ti: u32, j: u32) -> u32 { return j; }
