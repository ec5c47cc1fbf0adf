//! One graph node -> kernel launches: shapes, dtypes and launch geometry per op.

use gptoss_core::graph::{Node, Op};
use gptoss_core::{DType, Error, Graph, Result, Value};

use crate::driver::{backend, Arg, CUdeviceptr};
use crate::{Cuda, Flavor};

/// Warps per block of the warp-per-row kernels.
const WARPS: u32 = 8;

/// Pairs per tile of the grouped MoE GEMMs (32 M_MT in mma.cu): 64, or 128 (the `*128`
/// kernels) when the experts average at least 128 pairs.
const MOE_BM: usize = 64;

/// Tiled (shared K/V) attention from this many queries on.
const TILED_ATTENTION_MIN_T: usize = 16;
/// Key splits of the one-token attention at most (attention_merge's MERGE_S).
const MAX_SPLITS: usize = 16;
/// Rows of a tile of the tiled paged attention (PAGED_TILE in kernels/common.cuh).
const PAGED_TILE: usize = 64;

fn unsupported(what: String) -> Error {
    Error::Unsupported {
        backend: backend().into(),
        what,
    }
}

/// The kernel dtype code of a float weight (see common.cuh).
pub(crate) fn float_code(v: &Value) -> Result<i32> {
    match v.desc.dtype {
        DType::F32 => Ok(0),
        DType::BF16 => Ok(1),
        DType::F16 => Ok(2),
        d => Err(unsupported(format!("{d} values for '{}'", v.name))),
    }
}

/// Activations (temporaries, inputs, outputs) are f32 on this backend.
fn want_f32(v: &Value) -> Result<()> {
    if v.desc.dtype == DType::F32 {
        Ok(())
    } else {
        Err(unsupported(format!(
            "{} activations ('{}'); this backend computes activations in F32",
            v.desc.dtype, v.name
        )))
    }
}

fn dims(v: &Value) -> &[usize] {
    v.desc.shape.dims()
}

pub(crate) fn i32_of(n: usize, what: &str) -> Result<i32> {
    i32::try_from(n).map_err(|_| Error::Input(format!("{what} = {n} does not fit a 32-bit index")))
}

pub(crate) fn blocks(n: usize, per: usize) -> Result<u32> {
    u32::try_from(n.div_ceil(per))
        .map_err(|_| Error::Input(format!("{n} elements need too many thread blocks")))
}

pub(crate) fn grid_y(n: usize) -> Result<u32> {
    if n > 65535 {
        return Err(unsupported(format!(
            "a second grid dimension of {n} (> 65535)"
        )));
    }
    Ok(n as u32)
}

/// The bf16 tensor-core kernel (attn_mma.cu) for a tiled attention of `t` queries, and the
/// query heads a block of it serves: from the tensor-core threshold on (so the exact-f32
/// fixture runs keep the f32 `attention_tiled*`), unless GPTOSS_CUDA_ATTN_F32=1; two heads
/// of a KV group a block where the group size is even (K/V tiles staged once for both).
fn mma_attention<F: Flavor>(
    be: &Cuda<F>,
    t: usize,
    (heads, kv_heads): (u32, u32),
    paged: bool,
) -> Option<(&'static str, u32)> {
    if !be.attn_mma || t < be.mma_min_t {
        return None;
    }
    let hb = if (heads / kv_heads) % be.attn_heads == 0 {
        be.attn_heads
    } else {
        1
    };
    let name = match (paged, hb) {
        (false, 1) => "attention_mma",
        (false, _) => "attention_mma2",
        (true, 1) => "attention_mma_paged",
        (true, _) => "attention_mma_paged2",
    };
    be.kernels.has(name).then_some((name, hb))
}

/// One weight matrix of a GEMV launch: `y [T, n] = x W^T + bias` (bias 0 when absent).
#[derive(Clone, Copy)]
pub(crate) struct GemvSegment {
    pub w: CUdeviceptr,
    pub bias: CUdeviceptr,
    pub y: CUdeviceptr,
    pub n: usize,
}

impl GemvSegment {
    /// No matrix: a launch's unused segment.
    pub(crate) const NONE: GemvSegment = GemvSegment {
        w: 0,
        bias: 0,
        y: 0,
        n: 0,
    };
}

/// Whether a linear of `t` tokens over `w` ([n, k]) takes the GEMV: few tokens (decode, small
/// batches), bf16 weights. It runs in chunks of tokens whose activations fit its 48 KiB of
/// shared memory (each chunk reads the weights once more): below the tensor-core threshold
/// always, up to 63 tokens too while the re-reads stay under ~150 MB, because a tensor-core
/// CTA walks all of K in a chain of dependent loads (~90 us at K = 2880), which small matrices
/// cannot hide.
pub(crate) fn gemv_fits<F: Flavor>(be: &Cuda<F>, w: &Value, t: usize, k: usize, n: usize) -> bool {
    let chunk = gemv_chunk(k);
    let rereads = t.div_ceil(chunk.max(1)) * n * k * 2;
    be.fast
        && w.desc.dtype == DType::BF16
        && k % 8 == 0
        && chunk > 0
        && (t < be.mma_min_t.min(16) || (t < 64 && rereads <= 150 << 20))
}

/// Tokens per GEMV launch (at most the kernel's 8).
fn gemv_chunk(k: usize) -> usize {
    ((48usize << 10) / (k * 4).max(1)).min(8)
}

/// `gemv_bf16` over up to three weight matrices that read the same x [t, k] (q/k/v of a layer
/// in one launch), in chunks of tokens.
/// GEMV blocks a launch has at most per SM (GPTOSS_CUDA_GEMV_BLOCKS_PER_SM, default 3: what
/// the one-token kernel keeps resident; 4 left a partial second wave on q/k/v, H100 20b decode
/// 359.5 vs 361.1 / 361.8 tok/s).
fn gemv_blocks_per_sm() -> u32 {
    static N: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *N.get_or_init(|| {
        std::env::var("GPTOSS_CUDA_GEMV_BLOCKS_PER_SM")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0)
            .unwrap_or(3)
    })
}

/// The grid of a GEMV launch over `segs`: a warp a row, at most GEMV_BLOCKS_PER_SM blocks an SM.
fn gemv_grid<F: Flavor>(be: &Cuda<F>, segs: &[GemvSegment]) -> Result<u32> {
    let rows: usize = segs.iter().map(|s| s.n).sum();
    Ok(blocks(rows, WARPS as usize)?.min(be.gpu.info.sms * gemv_blocks_per_sm()))
}

/// A GEMV launch's arguments after x and T: in features, bias dtype and three segments (the
/// missing ones empty), outputs from token `t0` on.
fn gemv_args(k: usize, bdt: i32, segs: &[GemvSegment], t0: usize) -> Result<Vec<Arg>> {
    let mut args = vec![Arg::I32(i32_of(k, "in features")?), Arg::I32(bdt)];
    for i in 0..3 {
        let s = segs.get(i).copied().unwrap_or(GemvSegment::NONE);
        let y = if s.n == 0 {
            0
        } else {
            s.y + (t0 * s.n * 4) as u64
        };
        args.extend([
            Arg::Ptr(s.w),
            Arg::Ptr(s.bias),
            Arg::Ptr(y),
            Arg::I32(i32_of(s.n, "out features")?),
        ]);
    }
    Ok(args)
}

pub(crate) fn gemv<F: Flavor>(
    be: &mut Cuda<F>,
    x: CUdeviceptr,
    t: usize,
    k: usize,
    bdt: i32,
    segs: &[GemvSegment],
) -> Result<()> {
    let grid = gemv_grid(be, segs)?;
    let chunk = gemv_chunk(k);
    for t0 in (0..t).step_by(chunk) {
        let tc = chunk.min(t - t0);
        let name = if tc == 1 { "gemv_bf16_t1" } else { "gemv_bf16" };
        let mut args = vec![
            Arg::Ptr(x + (t0 * k * 4) as u64),
            Arg::I32(i32_of(tc, "tokens")?),
        ];
        args.extend(gemv_args(k, bdt, segs, t0)?);
        // The one-token kernel waits for x after its first weight loads (launched early).
        let launch = if tc == 1 {
            Cuda::launch_early
        } else {
            Cuda::launch
        };
        launch(
            be,
            name,
            (grid, 1, 1),
            (32 * WARPS, 1, 1),
            (tc * k * 4) as u32,
            &args,
        )?;
    }
    Ok(())
}

/// `add_rms_norm` (decode family): `sum = a + b` (b = 0: a alone; sum_out = 0: not stored),
/// `out = rms_norm(sum) * w`, rows of `h` floats, one block per row.
pub(crate) fn add_rms_norm<F: Flavor>(
    be: &mut Cuda<F>,
    (t, h): (usize, usize),
    [a, b]: [CUdeviceptr; 2],
    sum_out: CUdeviceptr,
    (w, wv): (CUdeviceptr, &Value),
    out: CUdeviceptr,
    eps: f32,
) -> Result<()> {
    be.launch(
        "add_rms_norm",
        (blocks(t, 1)?, 1, 1),
        (256, 1, 1),
        0,
        &[
            Arg::Ptr(a),
            Arg::Ptr(b),
            Arg::Ptr(w),
            Arg::I32(float_code(wv)?),
            Arg::Ptr(sum_out),
            Arg::Ptr(out),
            Arg::I32(i32_of(h, "hidden")?),
            Arg::F32(eps),
        ],
    )
}

/// Whether a router of `e` experts over `t` tokens takes the spread kernels (a block a logit).
pub(crate) fn router_spread_fits<F: Flavor>(be: &Cuda<F>, t: usize, e: usize) -> bool {
    t <= ROUTER_TOKENS && e <= 1024 && be.kernels.has("router_topk_spread")
}

/// The arguments the fused add + norm + router kernels begin with (a, b, the norm weight and
/// its dtype, the sum and normed rows, eps, the router's weight, bias and its dtype).
fn add_norm_router_args(
    [a, b]: [CUdeviceptr; 2],
    (sum_out, norm_out): (CUdeviceptr, CUdeviceptr),
    (nw, nwv, eps): (CUdeviceptr, &Value, f32),
    (w, bias, bdt): (CUdeviceptr, CUdeviceptr, i32),
) -> Result<Vec<Arg>> {
    Ok(vec![
        Arg::Ptr(a),
        Arg::Ptr(b),
        Arg::Ptr(nw),
        Arg::I32(float_code(nwv)?),
        Arg::Ptr(sum_out),
        Arg::Ptr(norm_out),
        Arg::F32(eps),
        Arg::Ptr(w),
        Arg::Ptr(bias),
        Arg::I32(bdt),
    ])
}

/// `add_norm_router_spread`: the residual add and RMSNorm of `add_rms_norm`, then the spread
/// router and top-k of `router_topk` on the normed rows, in one launch (same arithmetic).
pub(crate) fn add_norm_router<F: Flavor>(
    be: &mut Cuda<F>,
    [a, b]: [CUdeviceptr; 2],
    (sum_out, norm_out): (CUdeviceptr, CUdeviceptr),
    (nw, nwv, eps): (CUdeviceptr, &Value, f32),
    (w, bias, bdt): (CUdeviceptr, CUdeviceptr, i32),
    (logits, ids, wts): (CUdeviceptr, CUdeviceptr, CUdeviceptr),
    (t, h, e, k): (usize, usize, usize, usize),
) -> Result<()> {
    be.router_spread_runs += 1;
    be.add_norm_router_runs += 1;
    let mut args =
        add_norm_router_args([a, b], (sum_out, norm_out), (nw, nwv, eps), (w, bias, bdt))?;
    args.extend([
        Arg::Ptr(logits),
        Arg::Ptr(be.done_counters),
        Arg::Ptr(ids),
        Arg::Ptr(wts),
        Arg::I32(i32_of(h, "hidden")?),
        Arg::I32(i32_of(e, "experts")?),
        Arg::I32(i32_of(k, "experts per token")?),
    ]);
    be.launch_early(
        "add_norm_router_spread",
        (blocks(e, 1)?, grid_y(t)?, 1),
        (256, 1, 1),
        0,
        &args,
    )
}

/// The most experts a router may have for its top-k to be taken inside the MoE kernels
/// (topk_small_warp: four logits a lane).
pub(crate) const TOPK_IN_MOE_MAX_E: usize = 128;

/// A router whose top-k the MoE node after it takes from the logits (`add_norm_router_logits`
/// ran instead of the spread router): the MoE's ids and weights buffers, which nothing has
/// written yet, and where the logits are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DeferredTopK {
    pub ids: CUdeviceptr,
    pub wts: CUdeviceptr,
    pub logits: CUdeviceptr,
    pub e: usize,
    pub k: usize,
}

/// `add_norm_router_logits`: `add_norm_router`'s sum, norm and logits (the same values) for
/// one token, without the top-k, which the MoE after it takes (`be.deferred_topk`). The logits
/// go to the backend's own buffer (`router_logits`), which no graph temporary shares, since
/// they are read after the graph's logits value is dead.
pub(crate) fn add_norm_router_logits<F: Flavor>(
    be: &mut Cuda<F>,
    [a, b]: [CUdeviceptr; 2],
    (sum_out, norm_out): (CUdeviceptr, CUdeviceptr),
    (nw, nwv, eps): (CUdeviceptr, &Value, f32),
    (w, bias, bdt): (CUdeviceptr, CUdeviceptr, i32),
    (ids, wts): (CUdeviceptr, CUdeviceptr),
    (h, e, k): (usize, usize, usize),
) -> Result<()> {
    let epb = be.router_experts_per_block(e);
    be.add_norm_router_runs += 1;
    let mut args =
        add_norm_router_args([a, b], (sum_out, norm_out), (nw, nwv, eps), (w, bias, bdt))?;
    args.extend([
        Arg::Ptr(be.router_logits),
        Arg::I32(i32_of(h, "hidden")?),
        Arg::I32(i32_of(e, "experts")?),
        Arg::I32(epb as i32),
    ]);
    be.launch_early(
        "add_norm_router_logits",
        (blocks(e, epb)?, 1, 1),
        (256, 1, 1),
        0,
        &args,
    )?;
    be.deferred_topk = Some(DeferredTopK {
        ids,
        wts,
        logits: be.router_logits,
        e,
        k,
    });
    Ok(())
}

/// The top-k of a deferred router as a kernel of its own (`topk_softmax_warp`), for an MoE
/// path whose kernels do not take it from the logits.
pub(crate) fn resolve_topk<F: Flavor>(be: &mut Cuda<F>, d: DeferredTopK) -> Result<()> {
    topk_softmax_warp(be, (d.logits, d.ids, d.wts), (1, d.e, d.k))
}

/// `topk_softmax_warp`: the top-`k` softmax of each of `t` rows of `e` logits `x` into `ids`
/// and `w` ([t, k]), a warp a row (E <= 1024, k <= 32).
fn topk_softmax_warp<F: Flavor>(
    be: &Cuda<F>,
    (x, ids, w): (CUdeviceptr, CUdeviceptr, CUdeviceptr),
    (t, e, k): (usize, usize, usize),
) -> Result<()> {
    be.launch(
        "topk_softmax_warp",
        (blocks(t, 4)?, 1, 1),
        (128, 1, 1),
        (4 * e * 4) as u32,
        &[
            Arg::Ptr(x),
            Arg::Ptr(ids),
            Arg::Ptr(w),
            Arg::I32(i32_of(t, "tokens")?),
            Arg::I32(i32_of(e, "experts")?),
            Arg::I32(i32_of(k, "experts per token")?),
        ],
    )
}

/// `rope_pairs` (decode family): RoPE of one tensor `(x, out, heads)` and optionally a second
/// at the same positions, one thread per rotated pair.
pub(crate) fn rope_pairs<F: Flavor>(
    be: &mut Cuda<F>,
    params: &gptoss_core::rope::RopeParams,
    t: usize,
    [(x0, o0, h0)]: [(CUdeviceptr, CUdeviceptr, u32); 1],
    second: Option<(CUdeviceptr, CUdeviceptr, u32)>,
    pos: CUdeviceptr,
) -> Result<()> {
    let (x1, o1, h1) = second.unwrap_or((0, 0, 0));
    let table = be.rope_table(params)?;
    let pairs = (h0 + h1) as usize * params.head_dim as usize / 2;
    let err = be.err;
    be.launch(
        "rope_pairs",
        (blocks(t, 1)?, grid_y(pairs.div_ceil(256))?, 1),
        (256, 1, 1),
        0,
        &[
            Arg::Ptr(x0),
            Arg::Ptr(o0),
            Arg::I32(h0 as i32),
            Arg::Ptr(x1),
            Arg::Ptr(o1),
            Arg::I32(h1 as i32),
            Arg::Ptr(pos),
            Arg::Ptr(table),
            Arg::I32(params.head_dim as i32),
            Arg::F32(params.attention_scaling()),
            Arg::Ptr(err),
        ],
    )
}

/// Tokens the router's spread kernel takes (its grid's y; its counters).
pub(crate) const ROUTER_TOKENS: usize = 64;
/// See `gemv_combine_launches` (lib.rs).
pub(crate) static GEMV_COMBINE_LAUNCHES: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(0);

/// `router_topk`: the router linear (bf16 `w` [e, h], optional bias) and the top-`k` softmax
/// of its logits of `t` tokens: one block per (expert, token) and the last of a token's blocks
/// picks (`router_topk_spread`, logits through `logits`), or one block per token.
pub(crate) fn router_topk<F: Flavor>(
    be: &mut Cuda<F>,
    x: CUdeviceptr,
    (w, bias, bdt): (CUdeviceptr, CUdeviceptr, i32),
    (logits, ids, wts): (CUdeviceptr, CUdeviceptr, CUdeviceptr),
    (t, h, e, k): (usize, usize, usize, usize),
) -> Result<()> {
    let shape = [
        Arg::I32(i32_of(h, "hidden")?),
        Arg::I32(i32_of(e, "experts")?),
        Arg::I32(i32_of(k, "experts per token")?),
    ];
    if router_spread_fits(be, t, e) {
        let mut args = vec![
            Arg::Ptr(x),
            Arg::Ptr(w),
            Arg::Ptr(bias),
            Arg::I32(bdt),
            Arg::Ptr(logits),
            Arg::Ptr(be.done_counters),
            Arg::Ptr(ids),
            Arg::Ptr(wts),
        ];
        args.extend(shape);
        be.router_spread_runs += 1;
        return be.launch(
            "router_topk_spread",
            (blocks(e, 1)?, grid_y(t)?, 1),
            (128, 1, 1),
            0,
            &args,
        );
    }
    let mut args = vec![
        Arg::Ptr(x),
        Arg::Ptr(w),
        Arg::Ptr(bias),
        Arg::I32(bdt),
        Arg::Ptr(ids),
        Arg::Ptr(wts),
    ];
    args.extend(shape);
    be.launch(
        "router_topk",
        (blocks(t, 1)?, 1, 1),
        (1024, 1, 1),
        ((h + e) * 4) as u32,
        &args,
    )
}

/// Attention of few query rows (decode) on the split kernel: the keys of each (row, head) split
/// over `splits` blocks, then attention_merge.
pub(crate) struct SplitAttention {
    pub q: CUdeviceptr,
    /// The k and v caches [cap, kv_heads * 64] (written with `fresh`).
    pub caches: (CUdeviceptr, CUdeviceptr),
    pub pos: CUdeviceptr,
    /// The sinks and their dtype code.
    pub sinks: (CUdeviceptr, i32),
    pub o: CUdeviceptr,
    /// (rows, heads, kv_heads, window, scale, cache rows); head_dim 64.
    pub shape: (usize, u32, u32, u32, f32, usize),
    /// One row: its k and v, which the kernel writes to the caches (no kv_write).
    pub fresh: Option<(CUdeviceptr, CUdeviceptr)>,
    /// With `fresh`: q and k arrive before RoPE, rotated in the kernel (inv_freq table,
    /// mscale).
    pub rope: Option<(CUdeviceptr, f32)>,
}

pub(crate) fn attention_split<F: Flavor>(be: &mut Cuda<F>, a: &SplitAttention) -> Result<()> {
    let (t, heads, kv_heads, window, scale, cap) = a.shape;
    let d = 64;
    let splits = (be.gpu.info.sms as usize * 4)
        .div_ceil(t * heads as usize)
        .next_power_of_two()
        .clamp(1, MAX_SPLITS);
    let parts = t * heads as usize * splits;
    let (fresh_k, fresh_v) = a.fresh.unwrap_or((0, 0));
    let (inv_freq, mscale) = a.rope.unwrap_or((0, 1.0));
    let pm = be.take_temp(parts * 4, "attention partial max")?;
    let pl = be.take_temp(parts * 4, "attention partial sum")?;
    let pacc = be.take_temp(parts * d * 4, "attention partial acc")?;
    let r = (|| -> Result<()> {
        be.launch_early(
            "attention_split",
            (blocks(t, 1)?, grid_y(heads as usize)?, splits as u32),
            (128, 1, 1),
            0,
            &[
                Arg::Ptr(a.q),
                Arg::Ptr(a.caches.0),
                Arg::Ptr(a.caches.1),
                Arg::Ptr(a.pos),
                Arg::Ptr(pm),
                Arg::Ptr(pl),
                Arg::Ptr(pacc),
                Arg::I32(heads as i32),
                Arg::I32(kv_heads as i32),
                Arg::I32(i32_of(window as usize, "window")?),
                Arg::F32(scale),
                Arg::I32(i32_of(cap, "cache capacity")?),
                Arg::Ptr(fresh_k),
                Arg::Ptr(fresh_v),
                Arg::Ptr(be.err),
                Arg::Ptr(inv_freq),
                Arg::F32(mscale),
            ],
        )?;
        be.launch_early(
            "attention_merge",
            (blocks(t, 1)?, grid_y(heads as usize)?, 1),
            (64, 1, 1),
            0,
            &[
                Arg::Ptr(pm),
                Arg::Ptr(pl),
                Arg::Ptr(pacc),
                Arg::Ptr(a.sinks.0),
                Arg::I32(a.sinks.1),
                Arg::Ptr(a.pos),
                Arg::Ptr(a.o),
                Arg::I32(heads as i32),
                Arg::I32(splits as i32),
                Arg::I32(i32_of(cap, "cache capacity")?),
            ],
        )
    })();
    be.give_temp(parts * 4, pm);
    be.give_temp(parts * 4, pl);
    be.give_temp(parts * d * 4, pacc);
    r
}

/// Write `t` rows of k and v (each `w` floats) into the caches at the rows an I32 index
/// gives (`ptrs`: k, v, index, k cache, v cache); `rows` = the caches' rows.
fn write_kv<F: Flavor>(
    be: &mut Cuda<F>,
    ptrs: [CUdeviceptr; 5],
    t: usize,
    w: usize,
    rows: usize,
) -> Result<()> {
    let mut args: Vec<Arg> = ptrs.iter().map(|p| Arg::Ptr(*p)).collect();
    args.extend([
        Arg::I32(i32_of(w, "kv width")?),
        Arg::I32(i32_of(rows, "cache rows")?),
        Arg::Ptr(be.err),
    ]);
    be.launch("kv_write", (blocks(t, 1)?, 1, 1), (256, 1, 1), 0, &args)
}

/// The arguments both attention kernels start with: q, k cache, v cache, sinks (and their
/// dtype code), positions (`ptrs` in that order; `sinks` is the sinks value).
fn attention_args(sinks: &Value, ptrs: [CUdeviceptr; 5]) -> Result<Vec<Arg>> {
    let [q, kc, vc, sk, pos] = ptrs;
    Ok(vec![
        Arg::Ptr(q),
        Arg::Ptr(kc),
        Arg::Ptr(vc),
        Arg::Ptr(sk),
        Arg::I32(float_code(sinks)?),
        Arg::Ptr(pos),
    ])
}

/// The shape arguments both attention kernels take after the output pointer.
fn attention_shape_args(
    heads: u32,
    kv_heads: u32,
    d: usize,
    window: u32,
    scale: f32,
) -> Result<[Arg; 5]> {
    Ok([
        Arg::I32(heads as i32),
        Arg::I32(kv_heads as i32),
        Arg::I32(d as i32),
        Arg::I32(i32_of(window as usize, "window")?),
        Arg::F32(scale),
    ])
}

/// The device pointer bound to value `id` (an error if it has none: a read after free).
pub(crate) fn value_ptr(
    graph: &Graph,
    ptrs: &[Option<CUdeviceptr>],
    id: gptoss_core::ValueId,
) -> Result<CUdeviceptr> {
    ptrs[id.0 as usize].ok_or_else(|| {
        Error::Graph(format!(
            "'{}' has no storage (read after free?)",
            graph.value(id).name
        ))
    })
}

/// A node's input and output values.
fn node_values<'g>(graph: &'g Graph, node: &Node) -> (Vec<&'g Value>, Vec<&'g Value>) {
    let of = |ids: &[gptoss_core::ValueId]| ids.iter().map(|i| graph.value(*i)).collect();
    (of(&node.inputs), of(&node.outputs))
}

pub fn run_node<F: Flavor>(
    be: &mut Cuda<F>,
    graph: &Graph,
    node: &Node,
    ptrs: &[Option<CUdeviceptr>],
) -> Result<()> {
    let (ins, outs) = node_values(graph, node);
    let ip = |k: usize| value_ptr(graph, ptrs, node.inputs[k]);
    let op_ = |k: usize| value_ptr(graph, ptrs, node.outputs[k]);
    let err = be.err;
    match &node.op {
        Op::Embed => {
            want_f32(outs[0])?;
            let (v, h) = (dims(ins[0])[0], dims(ins[0])[1]);
            let t = dims(ins[1])[0];
            be.launch(
                "embed",
                (blocks(t, 1)?, 1, 1),
                (256, 1, 1),
                0,
                &[
                    Arg::Ptr(ip(0)?),
                    Arg::I32(float_code(ins[0])?),
                    Arg::Ptr(ip(1)?),
                    Arg::Ptr(op_(0)?),
                    Arg::I32(i32_of(v, "vocab")?),
                    Arg::I32(i32_of(h, "hidden")?),
                    Arg::Ptr(err),
                ],
            )
        }
        Op::RmsNorm { eps } => {
            want_f32(ins[0])?;
            want_f32(outs[0])?;
            let (t, h) = (dims(ins[0])[0], dims(ins[0])[1]);
            if be.fast && h % 4 == 0 && h <= 4096 && be.kernels.has("add_rms_norm") {
                let w = (ip(1)?, ins[1]);
                return add_rms_norm(be, (t, h), [ip(0)?, 0], 0, w, op_(0)?, *eps);
            }
            be.launch(
                "rms_norm",
                (blocks(t, 1)?, 1, 1),
                (256, 1, 1),
                0,
                &[
                    Arg::Ptr(ip(0)?),
                    Arg::Ptr(ip(1)?),
                    Arg::I32(float_code(ins[1])?),
                    Arg::Ptr(op_(0)?),
                    Arg::I32(i32_of(h, "hidden")?),
                    Arg::F32(*eps),
                ],
            )
        }
        Op::Linear => {
            want_f32(ins[0])?;
            want_f32(outs[0])?;
            let (t, k) = (dims(ins[0])[0], dims(ins[0])[1]);
            let n = dims(ins[1])[0];
            let name = match ins[1].desc.dtype {
                DType::F32 => "linear_f32",
                DType::BF16 => "linear_bf16",
                DType::F16 => "linear_f16",
                d => return Err(unsupported(format!("linear with {d} weights"))),
            };
            let (bias, bdt) = match ins.get(2) {
                Some(b) => (ip(2)?, float_code(b)?),
                None => (0, 0),
            };
            if gemv_fits(be, ins[1], t, k, n) {
                let seg = GemvSegment {
                    w: ip(1)?,
                    bias,
                    y: op_(0)?,
                    n,
                };
                return gemv(be, ip(0)?, t, k, bdt, &[seg]);
            }
            if crate::cublas_ops::linear_fits(be, ins[1].desc.dtype == DType::BF16, t) {
                let io = (ip(0)?, ip(1)?, bias, bdt, op_(0)?);
                return crate::cublas_ops::linear(be, io, (t, n, k));
            }
            if be.fast
                && ins[1].desc.dtype == DType::BF16
                && k % 8 == 0
                && t >= be.mma_min_t
                && be.kernels.has("gemm_bf16")
            {
                return be.launch(
                    "gemm_bf16",
                    (blocks(n, 128)?, grid_y(t.div_ceil(128))?, 1),
                    (256, 1, 1),
                    0,
                    &[
                        Arg::Ptr(ip(0)?),
                        Arg::Ptr(ip(1)?),
                        Arg::Ptr(bias),
                        Arg::I32(bdt),
                        Arg::Ptr(op_(0)?),
                        Arg::I32(i32_of(t, "tokens")?),
                        Arg::I32(i32_of(n, "out features")?),
                        Arg::I32(i32_of(k, "in features")?),
                    ],
                );
            }
            be.launch(
                name,
                (blocks(n, WARPS as usize)?, 1, 1),
                (32 * WARPS, 1, 1),
                0,
                &[
                    Arg::Ptr(ip(0)?),
                    Arg::Ptr(ip(1)?),
                    Arg::Ptr(bias),
                    Arg::I32(bdt),
                    Arg::Ptr(op_(0)?),
                    Arg::I32(i32_of(t, "tokens")?),
                    Arg::I32(i32_of(n, "out features")?),
                    Arg::I32(i32_of(k, "in features")?),
                ],
            )
        }
        Op::Rope { params, heads } => {
            want_f32(ins[0])?;
            want_f32(outs[0])?;
            let t = dims(ins[0])[0];
            if be.fast && be.kernels.has("rope_pairs") {
                let one = [(ip(0)?, op_(0)?, *heads)];
                return rope_pairs(be, params, t, one, None, ip(1)?);
            }
            let table = be.rope_table(params)?;
            be.launch(
                "rope",
                (blocks(t, 1)?, 1, 1),
                (128, 1, 1),
                0,
                &[
                    Arg::Ptr(ip(0)?),
                    Arg::Ptr(ip(1)?),
                    Arg::Ptr(table),
                    Arg::Ptr(op_(0)?),
                    Arg::I32(*heads as i32),
                    Arg::I32(params.head_dim as i32),
                    Arg::F32(params.attention_scaling()),
                    Arg::Ptr(err),
                ],
            )
        }
        Op::Attention {
            heads,
            kv_heads,
            head_dim,
            window,
            scale,
        } => {
            for v in [ins[0], ins[1], ins[2], outs[0], outs[1], outs[2]] {
                want_f32(v)?;
            }
            let t = dims(ins[0])[0];
            let cap = dims(outs[1])[0];
            let d = *head_dim as usize;
            if d > 256 {
                return Err(unsupported(format!("attention with head_dim {d} (> 256)")));
            }
            let w = *kv_heads as usize * d;
            let split = be.fast
                && d == 64
                && t < TILED_ATTENTION_MIN_T
                && *kv_heads > 0
                && *heads % *kv_heads == 0
                && be.kernels.has("attention_split");
            // One token on the split kernel: it writes the token's k / v row itself.
            let fold_kv = split && t == 1;
            if !fold_kv {
                // Cache row of each token: its position.
                let kv = [ip(1)?, ip(2)?, ip(4)?, op_(1)?, op_(2)?];
                write_kv(be, kv, t, w, cap)?;
            }
            // Many queries: tiles of 64 queries share K/V tiles in shared memory (f32).
            if be.fast
                && d == 64
                && t >= TILED_ATTENTION_MIN_T
                && *kv_heads > 0
                && *heads % *kv_heads == 0
                && be.kernels.has("attention_tiled")
            {
                // bf16 tensor cores (same arguments), or f32 FMAs.
                let mma = mma_attention(be, t, (*heads, *kv_heads), false);
                be.attention_mma_runs += mma.is_some() as u64;
                let (name, hb) = mma.unwrap_or(("attention_tiled", 1));
                return be.launch(
                    name,
                    (blocks(t, 64)?, grid_y((*heads / hb) as usize)?, 1),
                    (128 * hb, 1, 1),
                    0,
                    &[
                        Arg::Ptr(ip(0)?),
                        Arg::Ptr(op_(1)?),
                        Arg::Ptr(op_(2)?),
                        Arg::Ptr(ip(3)?),
                        Arg::I32(float_code(ins[3])?),
                        Arg::Ptr(ip(4)?),
                        Arg::Ptr(op_(0)?),
                        Arg::I32(i32_of(t, "tokens")?),
                        Arg::I32(*heads as i32),
                        Arg::I32(*kv_heads as i32),
                        Arg::I32(i32_of(*window as usize, "window")?),
                        Arg::F32(*scale),
                        Arg::I32(i32_of(cap, "cache capacity")?),
                    ],
                );
            }
            // Few queries (decode): the keys split over several blocks per (token, head).
            if split {
                let a = SplitAttention {
                    q: ip(0)?,
                    caches: (op_(1)?, op_(2)?),
                    pos: ip(4)?,
                    sinks: (ip(3)?, float_code(ins[3])?),
                    o: op_(0)?,
                    shape: (t, *heads, *kv_heads, *window, *scale, cap),
                    fresh: if fold_kv {
                        Some((ip(1)?, ip(2)?))
                    } else {
                        None
                    },
                    rope: None,
                };
                return attention_split(be, &a);
            }
            // Few (token, head) blocks: more warps each, so the chip fills at decode.
            let warps = if be.fast && t * (*heads as usize) <= 4096 {
                16u32
            } else {
                4u32
            };
            let mut args = attention_args(ins[3], [ip(0)?, op_(1)?, op_(2)?, ip(3)?, ip(4)?])?;
            args.push(Arg::Ptr(op_(0)?));
            args.extend(attention_shape_args(*heads, *kv_heads, d, *window, *scale)?);
            args.push(Arg::I32(i32_of(cap, "cache capacity")?));
            be.launch(
                "attention",
                (blocks(t, 1)?, grid_y(*heads as usize)?, 1),
                (32 * warps, 1, 1),
                warps * d as u32 * 4,
                &args,
            )
        }
        Op::PagedAttention {
            heads,
            kv_heads,
            head_dim,
            window,
            scale,
            page_size,
        } => {
            for v in [ins[0], ins[1], ins[2], outs[0], outs[1], outs[2]] {
                want_f32(v)?;
            }
            let (t, rows) = (dims(ins[0])[0], dims(outs[1])[0]);
            let (d, ps, np) = (*head_dim as usize, *page_size as usize, dims(ins[6])[1]);
            if d > 256 || !ps.is_power_of_two() {
                return Err(unsupported(format!(
                    "paged attention with head_dim {d} (> 256) or page size {ps} (not a power of 2)"
                )));
            }
            let w = *kv_heads as usize * d;
            // Pool row of each token: its slot.
            let kv = [ip(1)?, ip(2)?, ip(5)?, op_(1)?, op_(2)?];
            write_kv(be, kv, t, w, rows)?;
            // Chunked prefill: tiles of PAGED_TILE rows of one sequence share K/V tiles in
            // shared memory (attention_tiled_paged); the rows of the other tiles (sequence
            // boundaries, decode rows) run in attention_paged, which skips the uniform ones.
            let tiled = be.fast
                && d == 64
                && t >= TILED_ATTENTION_MIN_T
                && *kv_heads > 0
                && *heads % *kv_heads == 0
                && be.kernels.has("attention_tiled_paged");
            let tiles = t.div_ceil(PAGED_TILE);
            let flags = if tiled {
                Some(be.take_temp(tiles * 4, "paged attention tile flags")?)
            } else {
                None
            };
            let r = (|| -> Result<()> {
                let table = [ip(4)?, ip(6)?];
                let shape = [
                    Arg::I32(i32_of(np, "pages per row")?),
                    Arg::I32(ps.trailing_zeros() as i32),
                ];
                if let Some(flags) = flags {
                    be.launch(
                        "paged_tiles_uniform",
                        (blocks(tiles, 1)?, 1, 1),
                        (64, 1, 1),
                        0,
                        &[
                            Arg::Ptr(table[0]),
                            Arg::Ptr(table[1]),
                            shape[0],
                            shape[1],
                            Arg::I32(i32_of(rows, "pool rows")?),
                            Arg::I32(i32_of(t, "tokens")?),
                            Arg::Ptr(flags),
                        ],
                    )?;
                    let mma = mma_attention(be, t, (*heads, *kv_heads), true);
                    be.attention_mma_runs += mma.is_some() as u64;
                    let (name, hb) = mma.unwrap_or(("attention_tiled_paged", 1));
                    be.launch(
                        name,
                        (blocks(tiles, 1)?, grid_y((*heads / hb) as usize)?, 1),
                        (128 * hb, 1, 1),
                        0,
                        &[
                            Arg::Ptr(ip(0)?),
                            Arg::Ptr(op_(1)?),
                            Arg::Ptr(op_(2)?),
                            Arg::Ptr(ip(3)?),
                            Arg::I32(float_code(ins[3])?),
                            Arg::Ptr(table[0]),
                            Arg::Ptr(table[1]),
                            shape[0],
                            shape[1],
                            Arg::Ptr(flags),
                            Arg::Ptr(op_(0)?),
                            Arg::I32(i32_of(t, "tokens")?),
                            Arg::I32(*heads as i32),
                            Arg::I32(*kv_heads as i32),
                            Arg::I32(i32_of(*window as usize, "window")?),
                            Arg::F32(*scale),
                        ],
                    )?;
                }
                // Decode rows of many sequences. Head_dim 64: a block per (row, KV head), the
                // group's query heads (up to 8) sharing each staged K/V chunk; other shapes: a
                // block per (row, query head).
                let group = heads.checked_div(*kv_heads).unwrap_or(0);
                let gqa = be.fast
                    && d == 64
                    && group > 0
                    && group <= 8
                    && *heads % *kv_heads == 0
                    && be.gqa_decode
                    && be.kernels.has("attention_paged_gqa");
                let mut args = attention_args(ins[3], [ip(0)?, op_(1)?, op_(2)?, ip(3)?, ip(4)?])?;
                args.extend([
                    Arg::Ptr(ip(6)?),
                    shape[0],
                    shape[1],
                    Arg::I32(i32_of(rows, "pool rows")?),
                    Arg::Ptr(op_(0)?),
                ]);
                let [nq, nkv, head_dim, win, sc] =
                    attention_shape_args(*heads, *kv_heads, d, *window, *scale)?;
                if gqa {
                    args.extend([nq, nkv, win, sc]); // head_dim 64 is built in
                } else {
                    args.extend([nq, nkv, head_dim, win, sc]);
                }
                args.extend([Arg::Ptr(err), Arg::Ptr(flags.unwrap_or(0))]);
                if gqa {
                    be.attention_gqa_runs += 1;
                    return be.launch(
                        "attention_paged_gqa",
                        (blocks(t, 1)?, grid_y(*kv_heads as usize)?, 1),
                        (32 * group, 1, 1),
                        0,
                        &args,
                    );
                }
                let warps = if t * (*heads as usize) <= 4096 {
                    8u32
                } else {
                    4u32
                };
                be.launch(
                    "attention_paged",
                    (blocks(t, 1)?, grid_y(*heads as usize)?, 1),
                    (32 * warps, 1, 1),
                    warps * d as u32 * 4,
                    &args,
                )
            })();
            if let Some(f) = flags {
                be.give_temp(tiles * 4, f);
            }
            r
        }
        Op::GatherRows => {
            want_f32(ins[0])?;
            want_f32(outs[0])?;
            let (t, n) = (dims(ins[0])[0], dims(ins[0])[1]);
            let b = dims(ins[1])[0];
            be.launch(
                "gather_rows",
                (blocks(n, 256)?, grid_y(b)?, 1),
                (256, 1, 1),
                0,
                &[
                    Arg::Ptr(ip(0)?),
                    Arg::Ptr(ip(1)?),
                    Arg::Ptr(op_(0)?),
                    Arg::I32(i32_of(t, "rows")?),
                    Arg::I32(i32_of(n, "row width")?),
                    Arg::Ptr(err),
                ],
            )
        }
        Op::TopKSoftmax { k } => {
            want_f32(ins[0])?;
            want_f32(outs[1])?;
            let (t, e) = (dims(ins[0])[0], dims(ins[0])[1]);
            if e > 1024 || *k > 32 {
                return Err(unsupported(format!(
                    "top-{k} of {e} experts (at most top-32 of 1024)"
                )));
            }
            if be.fast {
                return topk_softmax_warp(be, (ip(0)?, op_(0)?, op_(1)?), (t, e, *k as usize));
            }
            be.launch(
                "topk_softmax",
                (blocks(t, 64)?, 1, 1),
                (64, 1, 1),
                0,
                &[
                    Arg::Ptr(ip(0)?),
                    Arg::Ptr(op_(0)?),
                    Arg::Ptr(op_(1)?),
                    Arg::I32(i32_of(t, "tokens")?),
                    Arg::I32(e as i32),
                    Arg::I32(*k as i32),
                ],
            )
        }
        Op::MoeMxfp4 {
            swiglu_limit,
            alpha,
        } => run_moe(
            be,
            graph,
            node,
            ptrs,
            (*swiglu_limit, *alpha),
            MoeTail::Combine,
        ),
        Op::Add => {
            let n = ins[0].desc.numel();
            let name = match (ins[0].desc.dtype, ins[1].desc.dtype, outs[0].desc.dtype) {
                (DType::F32, DType::F32, DType::F32) => "add_f32",
                (DType::I32, DType::I32, DType::I32) => "add_i32",
                (a, b, o) => {
                    return Err(unsupported(format!("add of {a} and {b} into {o}")));
                }
            };
            be.launch(
                name,
                (blocks(n, 256)?, 1, 1),
                (256, 1, 1),
                0,
                &[
                    Arg::Ptr(ip(0)?),
                    Arg::Ptr(ip(1)?),
                    Arg::Ptr(op_(0)?),
                    Arg::I64(n as i64),
                ],
            )
        }
        Op::LocalExperts { first, count } => {
            let n = ins[0].desc.numel();
            be.launch(
                "local_experts",
                (blocks(n, 256)?, 1, 1),
                (256, 1, 1),
                0,
                &[
                    Arg::Ptr(ip(0)?),
                    Arg::Ptr(op_(0)?),
                    Arg::I64(n as i64),
                    Arg::I32(i32_of(*first as usize, "first expert")?),
                    Arg::I32(i32_of(*count as usize, "expert count")?),
                ],
            )
        }
        Op::AllReduceSum => {
            want_f32(ins[0])?;
            want_f32(outs[0])?;
            let n = ins[0].desc.numel();
            if be.gpu.comm.is_some() {
                return be.gpu.all_reduce(ip(0)?, op_(0)?, n);
            }
            // Not split: the sum over one shard is a copy.
            be.launch(
                "copy_f32",
                (blocks(n, 256)?, 1, 1),
                (256, 1, 1),
                0,
                &[Arg::Ptr(ip(0)?), Arg::Ptr(op_(0)?), Arg::I64(n as i64)],
            )
        }
        Op::LastRow => {
            want_f32(ins[0])?;
            want_f32(outs[0])?;
            let (t, n) = (dims(ins[0])[0], dims(ins[0])[1]);
            be.launch(
                "last_row",
                (blocks(n, 256)?, 1, 1),
                (256, 1, 1),
                0,
                &[
                    Arg::Ptr(ip(0)?),
                    Arg::Ptr(op_(0)?),
                    Arg::I32(i32_of(t, "rows")?),
                    Arg::I32(i32_of(n, "columns")?),
                ],
            )
        }
        Op::Argmax => {
            want_f32(ins[0])?;
            let (t, n) = (dims(ins[0])[0], dims(ins[0])[1]);
            if n == 0 && t > 0 {
                return Err(Error::tensor(&ins[0].name, "argmax over rows of length 0"));
            }
            if be.fast && t == 1 && be.kernels.has("argmax_partial") {
                // One long row (decode): many blocks, then one over their partial maxima.
                let nb = blocks(n, 256 * 8)?.min(be.gpu.info.sms * 2).max(1);
                let part = be.take_temp(nb as usize * 8, "argmax partials")?;
                let r = (|| -> Result<()> {
                    be.launch(
                        "argmax_partial",
                        (nb, 1, 1),
                        (256, 1, 1),
                        0,
                        &[
                            Arg::Ptr(ip(0)?),
                            Arg::Ptr(part),
                            Arg::I32(i32_of(n, "columns")?),
                        ],
                    )?;
                    be.launch(
                        "argmax_final",
                        (1, 1, 1),
                        (256, 1, 1),
                        0,
                        &[Arg::Ptr(part), Arg::I32(nb as i32), Arg::Ptr(op_(0)?)],
                    )
                })();
                be.give_temp(nb as usize * 8, part);
                return r;
            }
            be.launch(
                "argmax_rows",
                (blocks(t, 1)?, 1, 1),
                (256, 1, 1),
                0,
                &[
                    Arg::Ptr(ip(0)?),
                    Arg::Ptr(op_(0)?),
                    Arg::I32(i32_of(n, "columns")?),
                ],
            )
        }
    }
}

/// What follows the experts of a MoE node: its plain combine, or (fused, see fusion.rs) the
/// combine with the residual add and the next RMSNorm.
#[derive(Clone, Copy)]
pub(crate) enum MoeTail {
    Combine,
    AddNorm {
        resid: CUdeviceptr,
        sum: CUdeviceptr,
        /// (weight, its dtype code, output, eps); None: the add alone.
        norm: Option<(CUdeviceptr, i32, CUdeviceptr, f32)>,
    },
    /// One token: the combine, add and norm formed inside the one-token GEMV of the linears
    /// that read the normed row (`gemv_bf16_t1_moe`), which is not stored.
    NormLinears {
        resid: CUdeviceptr,
        sum: CUdeviceptr,
        /// (weight, its dtype code, eps)
        norm: (CUdeviceptr, i32, f32),
        /// The linears' segments (unused ones GemvSegment::NONE) and their bias dtype code.
        segs: [GemvSegment; 3],
        bdt: i32,
    },
}

/// `Op::MoeMxfp4`: the experts (grouped tensor-core GEMMs, the fast GEMV-style kernels or the
/// simple ones), then `tail`.
pub(crate) fn run_moe<F: Flavor>(
    be: &mut Cuda<F>,
    graph: &Graph,
    node: &Node,
    ptrs: &[Option<CUdeviceptr>],
    (swiglu_limit, alpha): (f32, f32),
    tail: MoeTail,
) -> Result<()> {
    let swiglu_limit = &swiglu_limit;
    let alpha = &alpha;
    let (ins, outs) = node_values(graph, node);
    let ip = |k: usize| value_ptr(graph, ptrs, node.inputs[k]);
    let op_ = |k: usize| value_ptr(graph, ptrs, node.outputs[k]);
    let err = be.err;

    want_f32(ins[0])?;
    want_f32(ins[2])?;
    want_f32(outs[0])?;
    let (t, h) = (dims(ins[0])[0], dims(ins[0])[1]);
    let k = dims(ins[1])[1];
    let (e, two_i) = (dims(ins[3])[0], dims(ins[3])[1]);
    let i = two_i / 2;
    if i % 32 != 0 {
        return Err(Error::tensor(
            &ins[3].name,
            format!("intermediate size {i} is not a multiple of 32"),
        ));
    }
    if k > 32 {
        return Err(unsupported(format!("{k} experts per token (at most 32)")));
    }
    let pairs = t * k;
    let grouped = be.fast && h % 32 == 0 && t >= be.mma_min_t && be.kernels.has("moe_route");
    // The router before may have left its top-k to this node (fusion.rs AddNormRouter with
    // `defer`): the moe_t1 kernels take it from the logits, every other path after a kernel
    // of its own.
    let deferred = be.deferred_topk.take();
    if let Some(d) = deferred {
        if (d.ids, d.wts, d.e, d.k, t) != (ip(1)?, ip(2)?, e, k, 1) {
            return Err(Error::backend(
                F::NAME,
                "internal: a router left its top-k to an MoE that does not read its outputs",
            ));
        }
        if grouped {
            resolve_topk(be, d)?;
        }
    }
    // --dequantize: both projections held as bf16 rows (the `_bf16` kernels read them).
    let bf16 = be.bf16_experts.contains(&ip(3)?) && be.bf16_experts.contains(&ip(6)?);
    if grouped && bf16 && be.gpu.has_cublas() && t <= be.cublas_moe_max_t {
        let y = be.take_temp(pairs * h * 4, "moe expert outputs")?;
        let experts = |w: usize, b: usize| -> Result<crate::cublas_ops::Experts> {
            Ok(crate::cublas_ops::Experts {
                w: ip(w)?,
                bias: ip(b)?,
                bdt: float_code(ins[b])?,
            })
        };
        let r = (|| -> Result<()> {
            let dims = crate::cublas_ops::MoeDims { t, k, e, h, i };
            let projections = (experts(3, 5)?, experts(6, 8)?);
            let io = (ip(0)?, ip(1)?, y);
            crate::cublas_ops::moe(be, io, projections, dims, (*swiglu_limit, *alpha))?;
            combine(be, y, ip(1)?, ip(2)?, op_(0)?, (t, k, e, h), tail, None)
        })();
        be.give_temp(pairs * h * 4, y);
        return r;
    }
    let act = be.take_temp(pairs * i * 4, "moe activations")?;
    let y = match be.take_temp(pairs * h * 4, "moe expert outputs") {
        Ok(y) => y,
        Err(e) => {
            be.give_temp(pairs * i * 4, act);
            return Err(e);
        }
    };
    let fast = be.fast && h % 32 == 0 && h.max(i) * 4 <= 48 << 10;
    if bf16 && h.max(i) * 4 > 48 << 10 {
        return Err(unsupported(format!(
            "dequantized experts with hidden {h} / intermediate {i} (at most 12288)"
        )));
    }
    // Blocks, scales and bias of the projection whose blocks are input `w` (3: gate_up, 6: down).
    let experts = |w: usize| -> Result<MxExperts> {
        Ok(MxExperts {
            blocks: ip(w)?,
            scales: ip(w + 1)?,
            bias: ip(w + 2)?,
            bdt: float_code(ins[w + 2])?,
        })
    };
    let run = (|| -> Result<()> {
        // The two projections' blocks, scales and biases.
        let weights = (experts(3)?, experts(6)?);
        let one_pair = match grouped || !be.fast {
            true => None,
            false => crate::moe_skinny::pairs_fit(be, bf16, (h, i), (&weights.0, &weights.1)),
        };
        let topk_inside = deferred.filter(|_| one_pair.is_some_and(|p| p.takes_topk()));
        if let (Some(d), None, false) = (deferred, topk_inside, grouped) {
            resolve_topk(be, d)?;
        }
        if grouped {
            // Tokens grouped by expert: route, then one grouped tensor-core GEMM per
            // projection (SwiGLU in the gate_up epilogue); y rows per pair, combined
            // below in ascending expert id (deterministic).
            // Prefill-sized groups take the pipelined kernels (bf16 A rows in list order).
            // (cp.async: 16-byte aligned code blocks, scale words 4-byte aligned.)
            let aligned =
                ip(3)? % 16 == 0 && ip(6)? % 16 == 0 && ip(4)? % 4 == 0 && ip(7)? % 4 == 0;
            let v2 = !bf16
                && !be.moe_mma_v1
                && aligned
                && moe_v2_fits(pairs, e, h, i)
                && be.kernels.has("moe_gate_up_v2")
                && be.kernels.has("moe_down_v2");
            let big = pairs >= 128 * e;
            let skinny = !v2 && crate::moe_skinny::fits(be, bf16, pairs, e, (h, i));
            let bm = match (v2, skinny, big) {
                (true, _, _) => crate::kernels::MOE_V2_BM,
                (false, true, _) => crate::moe_skinny::pairs_per_tile(be),
                (false, false, true) => 2 * MOE_BM,
                (false, false, false) => MOE_BM,
            };
            let (gu_name, dn_name) = match (big, bf16) {
                (true, false) => ("moe_gate_up_mma128", "moe_down_mma128"),
                (false, false) => ("moe_gate_up_mma", "moe_down_mma"),
                (true, true) => ("moe_gate_up_mma128_bf16", "moe_down_mma128_bf16"),
                (false, true) => ("moe_gate_up_mma_bf16", "moe_down_mma_bf16"),
            };
            let max_tiles = pairs.div_ceil(bm) + e;
            let list = be.take_temp(pairs * 4, "moe pair list")?;
            let tiles = be.take_temp(max_tiles * 12 + 16, "moe tiles")?;
            let r = (|| -> Result<()> {
                let ntiles = tiles + (max_tiles * 12) as u64;
                be.launch(
                    "moe_route",
                    (1, 1, 1),
                    (1024, 1, 1),
                    (3 * e * 4) as u32,
                    &[
                        Arg::Ptr(ip(1)?),
                        Arg::I32(i32_of(pairs, "pairs")?),
                        Arg::I32(i32_of(e, "experts")?),
                        Arg::I32(bm as i32),
                        Arg::Ptr(list),
                        Arg::Ptr(tiles),
                        Arg::Ptr(ntiles),
                        Arg::I32(i32_of(max_tiles, "moe tiles")?),
                        Arg::Ptr(err),
                    ],
                )?;
                let route = Route {
                    list,
                    tiles,
                    ntiles,
                    max_tiles,
                };
                if skinny {
                    be.skinny_moe_runs += 1;
                    return crate::moe_skinny::run(
                        be,
                        (ip(0)?, act, y),
                        &route,
                        (&weights.0, &weights.1),
                        (t, k, h, i),
                        bm,
                        (*swiglu_limit, *alpha),
                    );
                }
                if v2 {
                    let shape = MoeShape { k, h, i, pairs };
                    return moe_v2(
                        be,
                        (ip(0)?, act, y),
                        &route,
                        (&weights.0, &weights.1),
                        shape,
                        (*swiglu_limit, *alpha),
                    );
                }
                be.launch(
                    gu_name,
                    (blocks(2 * i, 128)?, grid_y(max_tiles)?, 1),
                    (256, 1, 1),
                    0,
                    &[
                        Arg::Ptr(ip(0)?),
                        Arg::I32(k as i32),
                        Arg::Ptr(list),
                        Arg::Ptr(tiles),
                        Arg::Ptr(ntiles),
                        Arg::Ptr(ip(3)?),
                        Arg::Ptr(ip(4)?),
                        Arg::Ptr(ip(5)?),
                        Arg::I32(float_code(ins[5])?),
                        Arg::Ptr(act),
                        Arg::I32(i32_of(h, "hidden")?),
                        Arg::I32(i32_of(i, "intermediate")?),
                        Arg::F32(*swiglu_limit),
                        Arg::F32(*alpha),
                    ],
                )?;
                be.launch(
                    dn_name,
                    (blocks(h, 128)?, grid_y(max_tiles)?, 1),
                    (256, 1, 1),
                    0,
                    &[
                        Arg::Ptr(act),
                        Arg::Ptr(list),
                        Arg::Ptr(tiles),
                        Arg::Ptr(ntiles),
                        Arg::Ptr(ip(6)?),
                        Arg::Ptr(ip(7)?),
                        Arg::Ptr(ip(8)?),
                        Arg::I32(float_code(ins[8])?),
                        Arg::Ptr(y),
                        Arg::I32(h as i32),
                        Arg::I32(i as i32),
                    ],
                )
            })();
            be.give_temp(pairs * 4, list);
            be.give_temp(max_tiles * 12 + 16, tiles);
            r?;
        } else if let Some(kind) = one_pair {
            // Few tokens: each pair's expert rows on the tensor cores (moe_skinny.rs).
            be.moe_pair_runs += 1;
            be.topk_in_moe_runs += topk_inside.is_some() as u64;
            crate::moe_skinny::run_pairs(
                be,
                kind,
                (ip(0)?, ip(1)?, act, y),
                (&weights.0, &weights.1),
                (t, k, e, h, i),
                (*swiglu_limit, *alpha),
                topk_inside.map(|d| (d.logits, d.wts)),
            )?;
        } else {
            // The per-pair kernels, bf16, fast or simple, take the same arguments. Fast: each warp
            // one set of `rows` rows (gate/up pairs for gate_up), one memory trip issued before
            // its block stages x. Simple: a warp a row, x read from global memory.
            // The bf16 kernels (dequantized experts) take the scales argument unused.
            let (gu_rows, dn_rows) = be.moe_rows;
            let gu = match (bf16, fast, gu_rows) {
                (true, _, _) => ("moe_gate_up_bf16", i),
                (false, true, 4) => ("moe_gate_up_fast", i / 2),
                (false, true, _) => ("moe_gate_up_fast2", i),
                (false, false, _) => ("moe_gate_up", i),
            };
            let dn = match (bf16, fast, dn_rows) {
                (true, _, _) => ("moe_down_bf16", h),
                (false, true, 4) => ("moe_down_fast", h / 4),
                (false, true, _) => ("moe_down_fast2", h / 2),
                (false, false, _) => ("moe_down", h),
            };
            let staged = fast || bf16;
            let smem = |floats: usize| if staged { (floats * 4) as u32 } else { 0 };
            let sets = |n: usize| -> Result<u32> { grid_y(n.div_ceil(WARPS as usize).max(1)) };
            be.launch(
                gu.0,
                (blocks(pairs, 1)?, sets(gu.1)?, 1),
                (32 * WARPS, 1, 1),
                smem(h),
                &[
                    Arg::Ptr(ip(0)?),
                    Arg::Ptr(ip(1)?),
                    Arg::Ptr(ip(3)?),
                    Arg::Ptr(ip(4)?),
                    Arg::Ptr(ip(5)?),
                    Arg::I32(float_code(ins[5])?),
                    Arg::Ptr(act),
                    Arg::I32(k as i32),
                    Arg::I32(i32_of(e, "experts")?),
                    Arg::I32(i32_of(h, "hidden")?),
                    Arg::I32(i32_of(i, "intermediate")?),
                    Arg::F32(*swiglu_limit),
                    Arg::F32(*alpha),
                    Arg::Ptr(err),
                ],
            )?;
            be.launch(
                dn.0,
                (blocks(pairs, 1)?, sets(dn.1)?, 1),
                (32 * WARPS, 1, 1),
                smem(i),
                &[
                    Arg::Ptr(act),
                    Arg::Ptr(ip(1)?),
                    Arg::Ptr(ip(6)?),
                    Arg::Ptr(ip(7)?),
                    Arg::Ptr(ip(8)?),
                    Arg::I32(float_code(ins[8])?),
                    Arg::Ptr(y),
                    Arg::I32(k as i32),
                    Arg::I32(e as i32),
                    Arg::I32(h as i32),
                    Arg::I32(i as i32),
                ],
            )?;
        }
        let logits = deferred.map(|d| d.logits);
        combine(be, y, ip(1)?, ip(2)?, op_(0)?, (t, k, e, h), tail, logits)
    })();
    // Stream order makes the scratch safe to reuse by later launches.
    be.give_temp(pairs * i * 4, act);
    be.give_temp(pairs * h * 4, y);
    run
}

/// Experts take `moe_gate_up_v2`/`moe_down_v2` from this many pairs per expert on (prefill:
/// 2048 tokens of 20b give 256; batched decode stays on the 64/128-pair kernels) when both
/// projections' K is a multiple of their 64-deep k-tile.
const MOE_V2_MIN_PAIRS_PER_EXPERT: usize = 64;

/// Whether the pipelined prefill MoE kernels take this MoE (see MOE_V2_MIN_PAIRS_PER_EXPERT).
pub(crate) fn moe_v2_fits(pairs: usize, experts: usize, hidden: usize, inter: usize) -> bool {
    let bk = crate::kernels::MOE_V2_BK;
    pairs >= MOE_V2_MIN_PAIRS_PER_EXPERT * experts
        && hidden.is_multiple_of(bk)
        && inter.is_multiple_of(bk)
}

/// moe_route's output: the pair list and the tile table (count at `ntiles`).
pub(crate) struct Route {
    pub list: CUdeviceptr,
    pub tiles: CUdeviceptr,
    pub ntiles: CUdeviceptr,
    pub max_tiles: usize,
}

/// One projection's MXFP4 experts: blocks, scales, bias and its dtype code.
pub(crate) struct MxExperts {
    pub blocks: CUdeviceptr,
    pub scales: CUdeviceptr,
    pub bias: CUdeviceptr,
    pub bdt: i32,
}

#[derive(Clone, Copy)]
struct MoeShape {
    k: usize,
    h: usize,
    i: usize,
    pairs: usize,
}

/// The grouped MoE through the pipelined kernels: x rows gathered as bf16 in list order (into
/// y's buffer, free until down writes it), gate_up writing bf16 activations in list order
/// (into act's buffer), down writing y per pair.
fn moe_v2<F: Flavor>(
    be: &mut Cuda<F>,
    (x, act, y): (CUdeviceptr, CUdeviceptr, CUdeviceptr),
    route: &Route,
    (gu, dn): (&MxExperts, &MxExperts),
    s: MoeShape,
    (limit, alpha): (f32, f32),
) -> Result<()> {
    use crate::kernels::{MOE_V2_BN, MOE_V2_SMEM};
    let xs = y;
    be.launch(
        "moe_gather_tiles",
        (blocks(s.pairs, 1)?, blocks(s.h, 512)?, 1),
        (256, 1, 1),
        0,
        &[
            Arg::Ptr(x),
            Arg::I32(s.k as i32),
            Arg::Ptr(route.list),
            Arg::Ptr(route.tiles),
            Arg::Ptr(route.ntiles),
            Arg::I32(i32_of(s.h, "hidden")?),
            Arg::Ptr(xs),
        ],
    )?;
    let dims = [
        Arg::I32(i32_of(s.h, "hidden")?),
        Arg::I32(i32_of(s.i, "intermediate")?),
    ];
    let launch = |be: &mut Cuda<F>, name: &str, n: usize, a, w: &MxExperts, out, tail: &[Arg]| {
        let mut args = vec![
            Arg::Ptr(a),
            Arg::Ptr(route.list),
            Arg::Ptr(route.tiles),
            Arg::Ptr(route.ntiles),
            Arg::Ptr(w.blocks),
            Arg::Ptr(w.scales),
            Arg::Ptr(w.bias),
            Arg::I32(w.bdt),
            Arg::Ptr(out),
        ];
        args.extend_from_slice(tail);
        let grid = (blocks(n, MOE_V2_BN)?, grid_y(route.max_tiles)?, 1);
        be.launch(name, grid, (256, 1, 1), MOE_V2_SMEM, &args)
    };
    let swiglu = [dims[0], dims[1], Arg::F32(limit), Arg::F32(alpha)];
    launch(be, "moe_gate_up_v2", 2 * s.i, xs, gu, act, &swiglu)?;
    launch(be, "moe_down_v2", s.h, act, dn, y, &dims)?;
    be.moe_v2_runs += 1;
    Ok(())
}

/// Each token's expert outputs y [t*k, h] summed in ascending expert id (weights `w`) into
/// `out`, or as `tail` says. `logits`: the router's, when the MoE's kernels took the top-k
/// from them (the combine inside the GEMV then forms it too, before its wait).
#[allow(clippy::too_many_arguments)]
fn combine<F: Flavor>(
    be: &mut Cuda<F>,
    y: CUdeviceptr,
    ids: CUdeviceptr,
    w: CUdeviceptr,
    out: CUdeviceptr,
    (t, k, e, h): (usize, usize, usize, usize),
    tail: MoeTail,
    logits: Option<CUdeviceptr>,
) -> Result<()> {
    if let MoeTail::NormLinears {
        resid,
        sum,
        norm: (nw, nwdt, eps),
        segs,
        bdt,
    } = tail
    {
        let mut args = vec![
            Arg::Ptr(y),
            Arg::Ptr(ids),
            Arg::Ptr(w),
            Arg::Ptr(resid),
            Arg::Ptr(sum),
            Arg::Ptr(nw),
            Arg::I32(nwdt),
            Arg::F32(eps),
            Arg::I32(k as i32),
            Arg::I32(i32_of(e, "experts")?),
            Arg::Ptr(logits.unwrap_or(0)),
        ];
        args.extend(gemv_args(h, bdt, &segs, 0)?);
        GEMV_COMBINE_LAUNCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // x, then the residual's copy.
        return be.launch_early(
            "gemv_bf16_t1_moe",
            (gemv_grid(be, &segs)?, 1, 1),
            (32 * WARPS, 1, 1),
            (2 * h * 4) as u32,
            &args,
        );
    }
    if let MoeTail::AddNorm { resid, sum, norm } = tail {
        let (nw, nwdt, nout, eps) = norm.unwrap_or((0, 0, 0, 0.0));
        return be.launch_early(
            "moe_combine_add_norm",
            (blocks(t, 1)?, 1, 1),
            (256, 1, 1),
            0,
            &[
                Arg::Ptr(y),
                Arg::Ptr(ids),
                Arg::Ptr(w),
                Arg::Ptr(resid),
                Arg::Ptr(sum),
                Arg::Ptr(nw),
                Arg::I32(nwdt),
                Arg::Ptr(nout),
                Arg::I32(k as i32),
                Arg::I32(i32_of(e, "experts")?),
                Arg::I32(i32_of(h, "hidden")?),
                Arg::F32(eps),
            ],
        );
    }
    be.launch(
        "moe_combine",
        (blocks(t, 1)?, 1, 1),
        (256, 1, 1),
        0,
        &[
            Arg::Ptr(y),
            Arg::Ptr(ids),
            Arg::Ptr(w),
            Arg::Ptr(out),
            Arg::I32(k as i32),
            Arg::I32(e as i32),
            Arg::I32(h as i32),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::moe_v2_fits;

    #[test]
    fn prefill_moe_kernels_take_large_groups_with_64_deep_k() {
        // 20b (32 experts, H = I = 2880): from 512 tokens of top-4 (64 pairs per expert).
        assert!(moe_v2_fits(2048, 32, 2880, 2880));
        assert!(moe_v2_fits(8192, 32, 2880, 2880));
        assert!(!moe_v2_fits(2047, 32, 2880, 2880));
        // 120b (128 experts): from 2048 tokens.
        assert!(moe_v2_fits(8192, 128, 2880, 2880));
        assert!(!moe_v2_fits(4096, 128, 2880, 2880));
        // K of either projection not a multiple of the 64-deep k-tile.
        assert!(!moe_v2_fits(4096, 8, 2880, 2848));
        assert!(!moe_v2_fits(4096, 8, 96, 128));
    }
}
