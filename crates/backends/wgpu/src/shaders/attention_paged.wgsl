// Paged attention, step 2: rows of several sequences over one pool of pages; row ti's page
// table is pages[ti * np ..]; key j lives at pool row pages[j >> shift] << shift | j & mask.
struct P { t: u32, nq: u32, nkv: u32, d: u32, window: u32, rows: u32, sinks_bf16: u32,
           scale: f32, splits: u32, ks: u32, qlog: u32, np: u32, shift: u32, _a: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(7) var<storage, read> pages: array<i32>;

// The row's last key must sit on a page its table holds, inside the pool.
fn position_ok(ti: u32, ps: i32) -> bool {
    if (ps < 0 || (u32(ps) >> p.shift) >= p.np) { return false; }
    let pg = pages[ti * p.np + (u32(ps) >> p.shift)];
    return pg >= 0 && ((u32(pg) + 1u) << p.shift) <= p.rows;
}

fn key_row(ti: u32, j: u32) -> u32 {
    let pg = u32(pages[ti * p.np + (j >> p.shift)]);
    return (pg << p.shift) | (j & ((1u << p.shift) - 1u));
}
