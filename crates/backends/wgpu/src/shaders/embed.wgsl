// Embedding lookup: out[t, :] = table[ids[t], :]. The table may be split by rows into
// several bindings: one dispatch per part, rows [row0, row0 + rows).
struct P { t: u32, hidden: u32, vocab: u32, bf16: u32, row0: u32, rows: u32, first: u32, _p: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> table: array<u32>;
@group(0) @binding(2) var<storage, read> ids: array<i32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read_write> err: array<atomic<u32>, 4>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    let t = gid.y;
    if (t >= p.t || c >= p.hidden) { return; }
    let id = ids[t];
    if (id < 0 || u32(id) >= p.vocab) {
        if (p.first == 1u && c == 0u) { report(1u, u32(id), p.vocab, t); }
        return;
    }
    let r = u32(id);
    if (r < p.row0 || r >= p.row0 + p.rows) { return; }
    let i = (r - p.row0) * p.hidden + c;
    var v: f32;
    if (p.bf16 == 1u) { v = bf16_at(table[i >> 1u], i); } else { v = bitcast<f32>(table[i]); }
    out[t * p.hidden + c] = v;
}
