//! Checks any backend op by op against the cpu reference: random inputs, outputs poisoned
//! before the run, max-abs and NMSE bounds. Shared by the GPU backends' tests.

use gptoss_core::graph::{Op, ValueKind};
use gptoss_core::rope::{RopeParams, Yarn};
use gptoss_core::{bf16, Backend, BufferId, DType, Graph, TensorDesc, ValueId};

pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Roughly normal, mean 0, sd ~1.
    pub fn normal(&mut self) -> f32 {
        (self.uniform() + self.uniform() + self.uniform() + self.uniform() - 2.0) * 1.7
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal() * scale).collect()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
pub fn i32_bytes(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
pub fn to_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}
pub fn to_i32(b: &[u8]) -> Vec<i32> {
    b.chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// A float tensor in `dtype` (values rounded to it) plus its bytes.
pub fn float_tensor(dtype: DType, shape: &[usize], v: &[f32]) -> (TensorDesc, Vec<u8>) {
    let bytes = match dtype {
        DType::F32 => f32_bytes(v),
        DType::BF16 => bf16::f32_to_bytes(v),
        DType::F16 => v
            .iter()
            .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
            .collect(),
        d => panic!("{d} is not a float dtype"),
    };
    (TensorDesc::new(dtype, shape.to_vec()), bytes)
}

pub fn f32_t(shape: &[usize], v: &[f32]) -> (TensorDesc, Vec<u8>) {
    float_tensor(DType::F32, shape, v)
}
pub fn i32_t(shape: &[usize], v: &[i32]) -> (TensorDesc, Vec<u8>) {
    (TensorDesc::new(DType::I32, shape.to_vec()), i32_bytes(v))
}

/// Allocate and upload `ins` on `be` and bind them as Input values "in0", "in1", ... of `g`;
/// their buffers are pushed to `bufs` (for the caller to free), also when a later one fails.
pub fn bind_inputs<'a>(
    be: &mut dyn Backend,
    g: &mut Graph,
    ins: impl IntoIterator<Item = &'a (TensorDesc, Vec<u8>)>,
    bufs: &mut Vec<BufferId>,
) -> gptoss_core::Result<Vec<ValueId>> {
    let mut ids = Vec::new();
    for (i, (d, data)) in ins.into_iter().enumerate() {
        let b = be.alloc(d)?;
        bufs.push(b);
        be.upload(b, data)?;
        ids.push(g.add_value(format!("in{i}"), d.clone(), ValueKind::Input(b)));
    }
    Ok(ids)
}

/// Run one op on `be`: inputs bound as Input, outputs as Output (poisoned with 0xFF bytes first
/// so unwritten elements show) or as State with the given contents. Returns the outputs' bytes.
pub fn run_op(
    be: &mut dyn Backend,
    op: &Op,
    ins: &[(TensorDesc, Vec<u8>)],
    outs: &[(TensorDesc, Option<Vec<u8>>)],
) -> gptoss_core::Result<Vec<Vec<u8>>> {
    let mut g = Graph::new();
    let mut bufs = Vec::new();
    let in_ids = bind_inputs(be, &mut g, ins, &mut bufs)?;
    let mut out_bufs = Vec::new();
    let mut out_ids = Vec::new();
    for (i, (d, init)) in outs.iter().enumerate() {
        let b = be.alloc(d)?;
        let kind = match init {
            Some(data) => {
                be.upload(b, data)?;
                ValueKind::State(b)
            }
            None => {
                be.upload(b, &vec![0xFF; d.byte_size()])?;
                ValueKind::Output(b)
            }
        };
        out_bufs.push(b);
        out_ids.push(g.add_value(format!("out{i}"), d.clone(), kind));
    }
    g.push(op.clone(), in_ids, out_ids);
    let r = be.execute(&g);
    let mut got = Vec::new();
    if r.is_ok() {
        for b in &out_bufs {
            got.push(be.download(*b)?);
        }
    }
    for b in bufs.into_iter().chain(out_bufs) {
        be.free(b)?;
    }
    r.map(|_| got)
}

/// Both backends on the same op; returns (gpu, cpu) outputs.
pub fn both(
    gpu: &mut dyn Backend,
    op: &Op,
    ins: &[(TensorDesc, Vec<u8>)],
    outs: &[(TensorDesc, Option<Vec<u8>>)],
) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let g = run_op(gpu, op, ins, outs).unwrap_or_else(|e| panic!("gpu {}: {e}", op.name()));
    let mut cpu = gptoss_backend_cpu::cpu_backend(2);
    let c = run_op(&mut cpu, op, ins, outs).unwrap_or_else(|e| panic!("cpu {}: {e}", op.name()));
    (g, c)
}

/// Max abs difference (relative to the largest reference magnitude) and NMSE; panics when
/// over `tol` or when the GPU produced a non-finite value where the CPU did not.
pub fn assert_close(what: &str, gpu: &[f32], cpu: &[f32], tol: f32) {
    assert_close_within(what, gpu, cpu, tol, 1e-9);
}

/// [`assert_close`] with an explicit NMSE bound (looser for paths with bf16 operands).
pub fn assert_close_within(what: &str, gpu: &[f32], cpu: &[f32], tol: f32, nmse_max: f64) {
    assert_eq!(gpu.len(), cpu.len(), "{what}: lengths");
    let scale = cpu.iter().fold(1f32, |m, v| m.max(v.abs()));
    let (mut max_abs, mut err2, mut ref2) = (0f32, 0f64, 0f64);
    for (i, (g, c)) in gpu.iter().zip(cpu).enumerate() {
        assert!(
            g.is_finite() || !c.is_finite(),
            "{what}: element {i} is {g} on the GPU, {c} on the CPU"
        );
        max_abs = max_abs.max((g - c).abs());
        err2 += ((g - c) as f64).powi(2);
        ref2 += (*c as f64).powi(2);
    }
    let nmse = err2 / ref2.max(1e-30);
    eprintln!("{what}: max abs {max_abs:.3e} (scale {scale:.2e}), nmse {nmse:.3e}");
    assert!(
        max_abs <= tol * scale,
        "{what}: max abs diff {max_abs} > {tol} x {scale}"
    );
    assert!(nmse <= nmse_max, "{what}: nmse {nmse} > {nmse_max}");
}

pub fn gpt_oss_rope() -> RopeParams {
    RopeParams {
        head_dim: 64,
        theta: 150000.0,
        yarn: Some(Yarn {
            factor: 32.0,
            beta_fast: 32.0,
            beta_slow: 1.0,
            original_max_position_embeddings: 4096,
            truncate: false,
            attention_factor: None,
        }),
    }
}

// ---------------------------------------------------------------- per-op checks
// Each runs one op on `be` and on the cpu backend over random inputs, several shapes and
// dtypes, and asserts the bounds stated inside.

pub fn check_op_embed_matches_cpu(be: &mut dyn Backend) {
    let mut r = Rng(11);
    for dt in [DType::BF16, DType::F32, DType::F16] {
        let (v, h, t) = (100, 80, 7);
        let table = float_tensor(dt, &[v, h], &r.vec(v * h, 1.0));
        let ids: Vec<i32> = (0..t).map(|_| r.below(v) as i32).collect();
        let (g, c) = both(
            be,
            &Op::Embed,
            &[table, i32_t(&[t], &ids)],
            &[(TensorDesc::new(DType::F32, [t, h]), None)],
        );
        assert_eq!(
            to_f32(&g[0]),
            to_f32(&c[0]),
            "embed {dt}: rows are exact copies"
        );
    }
}

pub fn check_op_rms_norm_matches_cpu(be: &mut dyn Backend) {
    let mut r = Rng(12);
    for (t, h, dt) in [
        (5, 300, DType::BF16),
        (3, 2880, DType::F32),
        (1, 64, DType::F16),
    ] {
        let x = f32_t(&[t, h], &r.vec(t * h, 3.0));
        let w = float_tensor(dt, &[h], &r.vec(h, 1.0));
        let (g, c) = both(
            be,
            &Op::RmsNorm { eps: 1e-5 },
            &[x, w],
            &[(TensorDesc::new(DType::F32, [t, h]), None)],
        );
        assert_close(
            &format!("rms_norm {t}x{h} {dt}"),
            &to_f32(&g[0]),
            &to_f32(&c[0]),
            1e-5,
        );
    }
}

pub fn check_op_linear_matches_cpu(be: &mut dyn Backend) {
    let mut r = Rng(13);
    let cases = [
        (1, 77, 200, DType::BF16, Some(DType::BF16)),
        (11, 64, 64, DType::F32, None),
        (9, 33, 2880, DType::F16, Some(DType::F32)),
        (20, 201, 96, DType::BF16, Some(DType::BF16)),
        // The small-T bf16 GEMV path (16-byte loads, grid-stride rows, several passes at T > 4).
        (1, 1000, 2880, DType::BF16, Some(DType::BF16)),
        (3, 70, 64, DType::BF16, None),
        (7, 40, 4096, DType::BF16, Some(DType::F32)),
    ];
    for (t, n, k, wdt, bdt) in cases {
        let mut ins = vec![
            f32_t(&[t, k], &r.vec(t * k, 1.0)),
            float_tensor(wdt, &[n, k], &r.vec(n * k, 0.1)),
        ];
        if let Some(bdt) = bdt {
            ins.push(float_tensor(bdt, &[n], &r.vec(n, 1.0)));
        }
        let (g, c) = both(
            be,
            &Op::Linear,
            &ins,
            &[(TensorDesc::new(DType::F32, [t, n]), None)],
        );
        assert_close(
            &format!("linear t{t} n{n} k{k} {wdt} bias {bdt:?}"),
            &to_f32(&g[0]),
            &to_f32(&c[0]),
            1e-5,
        );
    }
}

pub fn check_op_rope_matches_cpu(be: &mut dyn Backend) {
    let mut r = Rng(14);
    let plain = RopeParams {
        head_dim: 16,
        theta: 10000.0,
        yarn: None,
    };
    for (params, heads) in [(gpt_oss_rope(), 3u32), (plain, 2)] {
        let t = 6;
        let w = heads as usize * params.head_dim as usize;
        let pos: Vec<i32> = vec![0, 1, 7, 4095, 4097, 100_000];
        let (g, c) = both(
            be,
            &Op::Rope { params, heads },
            &[f32_t(&[t, w], &r.vec(t * w, 1.0)), i32_t(&[t], &pos)],
            &[(TensorDesc::new(DType::F32, [t, w]), None)],
        );
        assert_close(
            &format!("rope d{} yarn {}", params.head_dim, params.yarn.is_some()),
            &to_f32(&g[0]),
            &to_f32(&c[0]),
            1e-5,
        );
    }
}

/// Random q [T, nq*d], k and v [T, nkv*d], bf16 sinks [nq] and the positions: the inputs
/// attention ops start with (paged ones add slots and page tables).
pub fn attention_inputs(
    r: &mut Rng,
    (nq, nkv, d): (u32, u32, u32),
    pos: &[i32],
) -> Vec<(TensorDesc, Vec<u8>)> {
    let t = pos.len();
    let (qw, kvw) = ((nq * d) as usize, (nkv * d) as usize);
    vec![
        f32_t(&[t, qw], &r.vec(t * qw, 2.0)),
        f32_t(&[t, kvw], &r.vec(t * kvw, 2.0)),
        f32_t(&[t, kvw], &r.vec(t * kvw, 1.0)),
        float_tensor(DType::BF16, &[nq as usize], &r.vec(nq as usize, 1.0)),
        i32_t(&[t], pos),
    ]
}

/// `Op::PagedAttention` over one chunked-prefill step of several sequences against the cpu:
/// sequence A prefills positions 0..100 from nothing, B continues at 40..140 over 40 earlier
/// positions already in the pool, then three decode rows of other sequences; page tables
/// shuffled, so 64-row tiles are one sequence, straddle A and B, or hold the decode rows.
/// Windows 0 and 48. Outputs within 1e-5, the written pools equal.
pub fn check_paged_prefill_chunk_matches_cpu(be: &mut dyn Backend) {
    check_paged_prefill_chunk_within(be, (1e-5, 1e-9));
}

/// [`check_paged_prefill_chunk_matches_cpu`] with explicit (max abs, NMSE) bounds (looser for
/// paths with bf16 operands).
pub fn check_paged_prefill_chunk_within(be: &mut dyn Backend, bounds: (f32, f64)) {
    let mut r = Rng(33);
    let (nq, nkv, d, ps) = (16u32, 2u32, 64u32, 16usize);
    let np = 10; // pages per row: up to 160 positions
    let seqs = 5;
    let pool_pages = seqs * np;
    // Sequence s owns pages s, s + 5, s + 10, ... in a shuffled order.
    let table = |s: usize| -> Vec<i32> {
        (0..np)
            .map(|i| ((i * 7 + 3) % np * seqs + s) as i32)
            .collect()
    };
    let mut rows: Vec<(usize, i32)> = (0..100).map(|p| (0, p)).collect();
    rows.extend((40..140).map(|p| (1, p)));
    rows.extend([(2, 7), (3, 150), (4, 0)]);
    let t = rows.len();
    let pos: Vec<i32> = rows.iter().map(|&(_, p)| p).collect();
    let pages: Vec<i32> = rows.iter().flat_map(|&(s, _)| table(s)).collect();
    let slots: Vec<i32> = rows
        .iter()
        .map(|&(s, p)| table(s)[p as usize / ps] * ps as i32 + p % ps as i32)
        .collect();
    for window in [0u32, 48] {
        let case = PagedCase {
            shape: (nq, nkv, d, ps),
            window,
            pos: &pos,
            pages: &pages,
            slots: &slots,
            pool_pages,
        };
        check_paged_case_within(
            be,
            &mut r,
            &case,
            &format!("paged prefill chunk of {t} rows"),
            bounds,
        );
    }
}

/// Rows of one `Op::PagedAttention` step: (heads, kv_heads, head_dim, page size), each row's
/// position, page table (P entries a row) and pool slot, and the pools' pages.
pub struct PagedCase<'a> {
    pub shape: (u32, u32, u32, usize),
    pub window: u32,
    pub pos: &'a [i32],
    pub pages: &'a [i32],
    pub slots: &'a [i32],
    pub pool_pages: usize,
}

/// `Op::PagedAttention` of `case` with random q/k/v, sinks and pools on `be` against the cpu:
/// outputs within 1e-5, the written pools equal.
pub fn check_paged_case(be: &mut dyn Backend, r: &mut Rng, case: &PagedCase, what: &str) {
    check_paged_case_within(be, r, case, what, (1e-5, 1e-9));
}

/// [`check_paged_case`] with explicit (max abs, NMSE) bounds for the outputs.
pub fn check_paged_case_within(
    be: &mut dyn Backend,
    r: &mut Rng,
    case: &PagedCase,
    what: &str,
    (tol, nmse): (f32, f64),
) {
    let (nq, nkv, d, ps) = case.shape;
    let (qw, kvw) = ((nq * d) as usize, (nkv * d) as usize);
    let t = case.pos.len();
    let op = Op::PagedAttention {
        heads: nq,
        kv_heads: nkv,
        head_dim: d,
        window: case.window,
        scale: 0.125,
        page_size: ps as u32,
    };
    let mut ins = attention_inputs(r, (nq, nkv, d), case.pos);
    ins.push(i32_t(&[t], case.slots));
    ins.push(i32_t(&[t, case.pages.len() / t], case.pages));
    let rows = case.pool_pages * ps;
    let pool = TensorDesc::new(DType::F32, [rows, kvw]);
    let (g, c) = both(
        be,
        &op,
        &ins,
        &[
            (TensorDesc::new(DType::F32, [t, qw]), None),
            (pool.clone(), Some(f32_bytes(&r.vec(rows * kvw, 1.0)))),
            (pool, Some(f32_bytes(&r.vec(rows * kvw, 1.0)))),
        ],
    );
    let what = format!("{what}, window {}", case.window);
    assert_close_within(&what, &to_f32(&g[0]), &to_f32(&c[0]), tol, nmse);
    assert_eq!(g[1], c[1], "{what}: k pool");
    assert_eq!(g[2], c[2], "{what}: v pool");
}

/// One attention case: (heads, kv_heads, head_dim, window, positions, cache capacity).
pub type AttentionCase = (u32, u32, u32, u32, Vec<i32>, usize);

pub fn check_op_attention_matches_cpu(be: &mut dyn Backend) {
    check_attention_cases(
        be,
        15,
        &[
            (8, 2, 64, 0, vec![20, 21, 22, 23], 40),
            (8, 2, 64, 7, vec![20, 21, 22, 23], 40),
            (4, 4, 16, 5, (0..13).collect(), 16),
            (64, 8, 64, 0, vec![300], 301),
            (64, 8, 64, 128, vec![300], 301),
            (2, 1, 128, 0, vec![3, 4], 8),
        ],
    );
}

/// `Op::Attention` on `be` against the cpu for each case (random q/k/v, sinks and caches from
/// `seed`): outputs within 1e-5, the written k/v cache rows equal.
pub fn check_attention_cases(be: &mut dyn Backend, seed: u64, cases: &[AttentionCase]) {
    let mut r = Rng(seed);
    for case in cases {
        let (what, g, c) = attention_case_outputs(be, &mut r, case);
        assert_close(&what, &g, &c, 1e-5);
    }
}

/// One `Op::Attention` case (scale 1/sqrt(d), random q/k/v, sinks and caches from `r`) on `be`
/// and the cpu: its name and both outputs; the written k/v cache rows must be equal.
pub fn attention_case_outputs(
    be: &mut dyn Backend,
    r: &mut Rng,
    case: &AttentionCase,
) -> (String, Vec<f32>, Vec<f32>) {
    attention_case_outputs_sharpened(be, r, case, 1.0)
}

/// [`attention_case_outputs`] with the score scale `sharpen` times 1/sqrt(d): large scores make
/// the softmax peaky, where rounding the scores' operands shows most.
pub fn attention_case_outputs_sharpened(
    be: &mut dyn Backend,
    r: &mut Rng,
    (nq, nkv, d, window, pos, cap): &AttentionCase,
    sharpen: f32,
) -> (String, Vec<f32>, Vec<f32>) {
    let (nq, nkv, d, window, cap) = (*nq, *nkv, *d, *window, *cap);
    let t = pos.len();
    let (qw, kvw) = ((nq * d) as usize, (nkv * d) as usize);
    let op = Op::Attention {
        heads: nq,
        kv_heads: nkv,
        head_dim: d,
        window,
        scale: sharpen / (d as f32).sqrt(),
    };
    let kc = r.vec(cap * kvw, 1.0);
    let vc = r.vec(cap * kvw, 1.0);
    let ins = attention_inputs(r, (nq, nkv, d), pos);
    let cache = TensorDesc::new(DType::F32, [cap, kvw]);
    let (g, c) = both(
        be,
        &op,
        &ins,
        &[
            (TensorDesc::new(DType::F32, [t, qw]), None),
            (cache.clone(), Some(f32_bytes(&kc))),
            (cache, Some(f32_bytes(&vc))),
        ],
    );
    let first = pos.first().copied().unwrap_or(0);
    let what = format!(
        "attention nq{nq} nkv{nkv} d{d} window {window} T{t} from {first}, scale x{sharpen}"
    );
    assert_eq!(g[1], c[1], "{what}: k cache");
    assert_eq!(g[2], c[2], "{what}: v cache");
    (what, to_f32(&g[0]), to_f32(&c[0]))
}

pub fn check_op_topk_softmax_matches_cpu(be: &mut dyn Backend) {
    let mut r = Rng(16);
    for (t, e, k) in [(9, 32, 4), (3, 128, 4), (70, 8, 2)] {
        // Values on a coarse grid so ties happen; ties must go to the lower index.
        let logits: Vec<f32> = (0..t * e)
            .map(|_| (r.below(9) as f32 - 4.0) * 0.5)
            .collect();
        let (g, c) = both(
            be,
            &Op::TopKSoftmax { k: k as u32 },
            &[f32_t(&[t, e], &logits)],
            &[
                (TensorDesc::new(DType::I32, [t, k]), None),
                (TensorDesc::new(DType::F32, [t, k]), None),
            ],
        );
        assert_eq!(to_i32(&g[0]), to_i32(&c[0]), "top-{k} of {e}: ids");
        assert_close(
            &format!("top-{k} of {e} weights"),
            &to_f32(&g[1]),
            &to_f32(&c[1]),
            1e-6,
        );
    }
}

/// gpt-oss's SwiGLU constants.
pub const MOE_OP: Op = Op::MoeMxfp4 {
    swiglu_limit: 7.0,
    alpha: 1.702,
};

/// Random inputs of a `MoeMxfp4` node of `(tokens, hidden, intermediate, experts, k)`: each
/// token routed to k distinct experts in a random (not ascending) order; with `skew`, expert
/// 0 is almost always a token's first (one crowded expert, the rest rare).
pub fn moe_inputs(
    r: &mut Rng,
    (t, h, i, e, k): (usize, usize, usize, usize, usize),
    skew: bool,
) -> Vec<(TensorDesc, Vec<u8>)> {
    let rows_gu = 2 * i;
    let (g1, g2) = (h / 32, i / 32);
    let bytes = |n: usize, r: &mut Rng| (0..n).map(|_| r.next() as u8).collect::<Vec<u8>>();
    let scales =
        |n: usize, r: &mut Rng| (0..n).map(|_| 118 + r.below(8) as u8).collect::<Vec<u8>>();
    let gub = bytes(e * rows_gu * g1 * 16, r);
    let gus = scales(e * rows_gu * g1, r);
    let dnb = bytes(e * h * g2 * 16, r);
    let dns = scales(e * h * g2, r);
    let mut ids = Vec::new();
    let mut w = Vec::new();
    for _ in 0..t {
        // k distinct experts in a random (not ascending) order.
        let mut pool: Vec<i32> = (0..e as i32).collect();
        for s in 0..k {
            // skew: expert 0 almost always first, the rest rarely.
            let j = if skew && s == 0 && r.below(4) != 0 {
                0
            } else {
                s + r.below(e - s)
            };
            pool.swap(s, j);
            ids.push(pool[s]);
            w.push(r.uniform() + 0.05);
        }
    }
    vec![
        f32_t(&[t, h], &r.vec(t * h, 1.0)),
        i32_t(&[t, k], &ids),
        f32_t(&[t, k], &w),
        (
            TensorDesc::new(DType::Mxfp4Blocks, [e, rows_gu, g1, 16]),
            gub,
        ),
        (TensorDesc::new(DType::E8m0Scales, [e, rows_gu, g1]), gus),
        float_tensor(DType::BF16, &[e, rows_gu], &r.vec(e * rows_gu, 2.0)),
        (TensorDesc::new(DType::Mxfp4Blocks, [e, h, g2, 16]), dnb),
        (TensorDesc::new(DType::E8m0Scales, [e, h, g2]), dns),
        float_tensor(DType::BF16, &[e, h], &r.vec(e * h, 1.0)),
    ]
}

pub fn check_op_moe_mxfp4_matches_cpu(be: &mut dyn Backend) {
    let mut r = Rng(17);
    // (tokens, hidden, intermediate, experts, k)
    for (t, h, i, e, k) in [
        (6, 128, 64, 8, 3),
        (1, 2880, 2880, 4, 4),
        (33, 64, 96, 4, 2),
    ] {
        let ins = moe_inputs(&mut r, (t, h, i, e, k), false);
        let op = MOE_OP;
        let (g, c) = both(
            be,
            &op,
            &ins,
            &[(TensorDesc::new(DType::F32, [t, h]), None)],
        );
        assert_close(
            &format!("moe t{t} h{h} i{i} e{e} k{k}"),
            &to_f32(&g[0]),
            &to_f32(&c[0]),
            1e-5,
        );
    }
}

pub fn check_op_add_last_row_argmax_match_cpu(be: &mut dyn Backend) {
    let mut r = Rng(18);
    let (t, n) = (7, 1000);
    let (a, b) = (r.vec(t * n, 1.0), r.vec(t * n, 1.0));
    let (g, c) = both(
        be,
        &Op::Add,
        &[f32_t(&[t, n], &a), f32_t(&[t, n], &b)],
        &[(TensorDesc::new(DType::F32, [t, n]), None)],
    );
    assert_eq!(to_f32(&g[0]), to_f32(&c[0]), "add f32 is exact");
    let ai: Vec<i32> = (0..50).map(|_| r.next() as i32).collect();
    let bi: Vec<i32> = (0..50).map(|_| r.next() as i32).collect();
    let (g, c) = both(
        be,
        &Op::Add,
        &[i32_t(&[50], &ai), i32_t(&[50], &bi)],
        &[(TensorDesc::new(DType::I32, [50]), None)],
    );
    assert_eq!(to_i32(&g[0]), to_i32(&c[0]), "add i32 wraps");
    let (g, c) = both(
        be,
        &Op::LastRow,
        &[f32_t(&[t, n], &a)],
        &[(TensorDesc::new(DType::F32, [1, n]), None)],
    );
    assert_eq!(to_f32(&g[0]), to_f32(&c[0]), "last_row");
    assert_eq!(to_f32(&g[0]), a[(t - 1) * n..].to_vec());
    // argmax: ties to the first index, NaN wins, plain random rows.
    let mut x = r.vec(t * n, 1.0);
    x[5] = 9.0;
    x[700] = 9.0;
    x[n + 3] = f32::NAN;
    x[n + 900] = f32::NAN;
    x[2 * n + 999] = 50.0;
    for v in &mut x[3 * n..4 * n] {
        *v = -1.0;
    }
    let (g, c) = both(
        be,
        &Op::Argmax,
        &[f32_t(&[t, n], &x)],
        &[(TensorDesc::new(DType::I32, [t]), None)],
    );
    let gi = to_i32(&g[0]);
    assert_eq!(gi, to_i32(&c[0]), "argmax");
    assert_eq!(&gi[..4], &[5, 3, 999, 0]);
    // One long row (decode's lm_head: the multi-block argmax): ties, NaN, -0/+0, all equal.
    let n = 201_088;
    let mut rows: Vec<(Vec<f32>, i32)> = Vec::new();
    let mut x = r.vec(n, 1.0);
    x[150_000] = 20.0;
    x[190_000] = 20.0;
    rows.push((x.clone(), 150_000));
    x[7] = f32::NAN;
    x[100] = f32::NAN;
    rows.push((x, 7));
    let mut z = vec![-1.0f32; n];
    z[10] = -0.0;
    z[20] = 0.0;
    rows.push((z, 10));
    rows.push((vec![3.0; n], 0));
    for (k, (x, want)) in rows.into_iter().enumerate() {
        let (g, c) = both(
            be,
            &Op::Argmax,
            &[f32_t(&[1, n], &x)],
            &[(TensorDesc::new(DType::I32, [1]), None)],
        );
        assert_eq!(to_i32(&g[0]), to_i32(&c[0]), "long-row argmax case {k}");
        assert_eq!(to_i32(&g[0]), vec![want], "long-row argmax case {k}");
    }
}

/// An out-of-range token id and a position beyond the KV cache are errors that name them.
/// Follow with [`check_still_usable`].
pub fn check_bad_input_is_an_error(be: &mut dyn Backend) {
    let table = float_tensor(DType::BF16, &[10, 32], &[0.5; 320]);
    let out = [(TensorDesc::new(DType::F32, [2, 32]), None)];
    let e = run_op(be, &Op::Embed, &[table, i32_t(&[2], &[3, 10])], &out)
        .unwrap_err()
        .to_string();
    assert!(e.contains("token id 10") && e.contains("10 tokens"), "{e}");
    check_position_beyond_the_cache(be, (1, 1, 16));
}

/// One token of `Op::Attention` of (heads, kv_heads, head_dim) at position 4 of a 4-row cache:
/// an error naming the position and the capacity.
pub fn check_position_beyond_the_cache(be: &mut dyn Backend, (nq, nkv, d): (u32, u32, u32)) {
    let op = Op::Attention {
        heads: nq,
        kv_heads: nkv,
        head_dim: d,
        window: 0,
        scale: 0.25,
    };
    let (qw, kvw) = ((nq * d) as usize, (nkv * d) as usize);
    let cache = TensorDesc::new(DType::F32, [4, kvw]);
    let e = run_op(
        be,
        &op,
        &[
            f32_t(&[1, qw], &vec![0.1; qw]),
            f32_t(&[1, kvw], &vec![0.1; kvw]),
            f32_t(&[1, kvw], &vec![0.1; kvw]),
            f32_t(&[nq as usize], &vec![0.0; nq as usize]),
            i32_t(&[1], &[4]),
        ],
        &[
            (TensorDesc::new(DType::F32, [1, qw]), None),
            (cache.clone(), Some(vec![0; cache.byte_size()])),
            (cache.clone(), Some(vec![0; cache.byte_size()])),
        ],
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("position 4") && e.contains("capacity of 4"),
        "{e}"
    );
}

/// After errors the backend still runs an op correctly (its error state was cleared).
pub fn check_still_usable(be: &mut dyn Backend) {
    let table = float_tensor(DType::BF16, &[10, 32], &[0.5; 320]);
    let out = [(TensorDesc::new(DType::F32, [2, 32]), None)];
    let got = run_op(be, &Op::Embed, &[table, i32_t(&[2], &[3, 9])], &out).unwrap();
    assert_eq!(to_f32(&got[0]), vec![0.5; 64]);
}
