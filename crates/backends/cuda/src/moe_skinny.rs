//! The grouped MXFP4 MoE for few pairs per expert (batched decode), kernels/moe_skinny.cu:
//! the expert weights stream once per tile of up to 64 pairs through f16 tensor cores with the
//! operands swapped (weights as A, activations as B), where the 64/128-pair tile kernels of
//! mma.cu walk 90 dependent k-steps per 128 columns with mostly empty rows.
//!
//! Steps, after `moe_route` (tiles of `PAIRS_PER_TILE` pairs): the routed x rows staged as
//! f16 in list order (`moe_skinny_stage`), gate_up with the SwiGLU into `act` (per pair), `act`
//! staged likewise, down into `y` (per pair); the caller's combine is unchanged.

use gptoss_core::Result;

use crate::driver::{Arg, CUdeviceptr};
use crate::ops::{blocks, grid_y, i32_of, MxExperts, Route};
use crate::{Cuda, Flavor};

/// Pairs a tile (SK_NT n8 tiles in moe_skinny.cu): moe_route's BM for this path; the `4`
/// kernels take half as many (see `pairs_per_tile`).
pub(crate) const PAIRS_PER_TILE: usize = 64;
const NARROW_PAIRS_PER_TILE: usize = 32;
/// Weight rows a block (SK_ROWS) and its warps (SK_WARPS), the depth of each warp's cp.async
/// ring (SK_STAGES) and the bytes of a slot: 32 rows' code groups and scale words (SK_SLOT).
const ROWS_PER_BLOCK: usize = 128;
const WARPS: usize = 4;
const STAGES: usize = 6;
const SLOT: usize = 640;

/// Shared memory of a block: each warp's ring.
const SMEM: usize = WARPS * STAGES * SLOT;
/// Shared memory of a one-pair block (moe_pair) whose rows have `k` inputs: the rings, each
/// warp's 32 x 8 partial sums and the pair's row as f16.
fn pair_smem(k: usize) -> usize {
    SMEM + WARPS * 32 * 8 * 4 + 2 * k
}

/// Whether the MoE of `pairs` (token, expert) pairs over `experts` MXFP4 experts of hidden /
/// intermediate size `(h, i)` takes this path: experts average fewer pairs than a tile, the
/// kernels are built (sm_80+), the experts are not dequantized, and GPTOSS_CUDA_NO_SKINNY is
/// unset.
pub(crate) fn fits<F: Flavor>(
    be: &Cuda<F>,
    bf16_experts: bool,
    pairs: usize,
    experts: usize,
    (h, i): (usize, usize),
) -> bool {
    be.skinny_moe
        && !bf16_experts
        && pairs < PAIRS_PER_TILE * experts
        && h % 32 == 0
        && i % 32 == 0
        && be.kernels.has("moe_skinny_gate_up")
}

/// The one-pair kernels of a few-token MoE (below the grouped paths' token count, batch-1
/// decode): K split over a block's warps (`moe_pair_*`), or 16 whole rows a warp streamed in
/// coalesced stages (`moe_t1_*`, the default). See `from_env`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnePair {
    Split,
    /// moe_t1 kernels of a shape.
    Rows(&'static T1Shape),
}

impl OnePair {
    /// The default rows kernels unless GPTOSS_CUDA_PAIR_MOE says `1`/`split`, `0` (None: the
    /// f32 per-pair kernels) or names another shape (`rows4`). H100, 20b batch-1 decode
    /// (`--prompt 512 --gen 256`): 376-379 tok/s on rows against 368-371 on the f32 kernels,
    /// 353 split.
    pub(crate) fn from_env() -> Option<OnePair> {
        let var = std::env::var("GPTOSS_CUDA_PAIR_MOE");
        match var.as_deref() {
            Ok("1") | Ok("split") => Some(OnePair::Split),
            Ok("0") => None,
            name => {
                let shape = T1_SHAPES.iter().find(|t| Ok(t.name) == name);
                Some(OnePair::Rows(shape.unwrap_or(&T1_SHAPES[0])))
            }
        }
    }

    fn names(self) -> (&'static str, &'static str) {
        match self {
            OnePair::Split => ("moe_pair_gate_up", "moe_pair_down"),
            OnePair::Rows(t) => t.kernels,
        }
    }

    /// Whether the kernels take a token's top-k from the router's logits themselves (moe_t1).
    pub(crate) fn takes_topk(self) -> bool {
        matches!(self, OnePair::Rows(_))
    }

    /// moe_t1's shape (None for the split kernels).
    fn t1_shape(self) -> Option<&'static T1Shape> {
        match self {
            OnePair::Split => None,
            OnePair::Rows(t) => Some(t),
        }
    }

    /// Threads a block.
    fn threads(self) -> usize {
        self.t1_shape().map_or(32 * WARPS, |t| 32 * t.warps)
    }

    /// Output rows a block covers, for gate_up (`down` false) or down.
    fn rows_per_block(self, down: bool) -> usize {
        self.t1_shape().map_or(32, |t| 16 * t.warps / t.ks(down))
    }

    /// Shared memory of a block whose rows have `k` inputs.
    fn smem(self, k: usize, down: bool) -> usize {
        self.t1_shape()
            .map_or_else(|| pair_smem(k), |t| t.smem(k, t.ks(down)))
    }
}

/// A moe_t1 kernel pair's shape (MOE_T1_KERNELS in moe_skinny.cu): warps a block, warps
/// sharing a 16-row tile in gate_up and in down (down has half the rows), ring depth.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct T1Shape {
    name: &'static str,
    kernels: (&'static str, &'static str),
    warps: usize,
    gate_up_ks: usize,
    down_ks: usize,
    stages: usize,
}
/// The default kernels first (T1_WARPS, T1_GATE_UP_KS, T1_DOWN_KS, T1_STAGES: 6-warp blocks,
/// 3-deep rings), then the 4-warp ones with 4-deep rings (GPTOSS_CUDA_PAIR_MOE=rows4). H100,
/// 20b batch-1 decode (`--prompt 512 --gen 256`), alternating: 434.6 / 433.5 tok/s against
/// 428.4 / 428.2; one step's kernels (Nsight Compute): gate_up 21.05 / down 14.42 us against
/// 21.59 / 14.48. Both fill an H100 in one wave (720 blocks each); the 6-warp blocks put 33
/// warps on an SM where the 4-warp ones put 22, each walking a third fewer stages.
const T1_SHAPES: [T1Shape; 2] = [
    T1Shape {
        name: "rows",
        kernels: ("moe_t1_gate_up", "moe_t1_down"),
        warps: 6,
        gate_up_ks: 3,
        down_ks: 6,
        stages: 3,
    },
    T1Shape {
        name: "rows4",
        kernels: ("moe_t1_gate_up_w4", "moe_t1_down_w4"),
        warps: 4,
        gate_up_ks: 2,
        down_ks: 4,
        stages: 4,
    },
];
/// A ring slot's bytes (T1_SLOT: 16 rows of 4 groups, rows 80 bytes apart).
const T1_SLOT: usize = 16 * (4 * 16 + 16);
impl T1Shape {
    const fn ks(&self, down: bool) -> usize {
        if down {
            self.down_ks
        } else {
            self.gate_up_ks
        }
    }
    /// Shared memory for rows of `k` inputs, `ks` warps a tile: the pair's row as f16, the
    /// tiles' scales, each warp's ring and partial sums.
    pub(crate) const fn smem(&self, k: usize, ks: usize) -> usize {
        2 * k + self.warps / ks * 16 * (k / 32) + self.warps * (self.stages * T1_SLOT + 16 * 4)
    }
}
/// The most moe_t1 asks for (rows of up to 4096 inputs; kernels.rs raises the limit to it).
pub(crate) const T1_SMEM_MAX: usize = {
    let (mut most, mut i) = (0, 0);
    while i < T1_SHAPES.len() {
        let t = &T1_SHAPES[i];
        let m = t.smem(4096, t.gate_up_ks);
        if m > most {
            most = m;
        }
        i += 1;
    }
    most
};
// Within sm_86/sm_89's 99 KiB a block (kernels.rs raises the limit to it).
const _: () = assert!(T1_SMEM_MAX <= 99 << 10);

/// Which one-pair kernels a few-token MoE of MXFP4 experts (`bf16_experts` false) of hidden /
/// intermediate size `(h, i)` takes, if any: the chosen ones, built, fitting the sizes and
/// (moe_t1's 16-byte copies) the alignment of the blocks and scales.
pub(crate) fn pairs_fit<F: Flavor>(
    be: &Cuda<F>,
    bf16_experts: bool,
    (h, i): (usize, usize),
    experts: (&MxExperts, &MxExperts),
) -> Option<OnePair> {
    let kind = be.pair_moe?;
    let (gate_up, down) = kind.names();
    let sizes = !bf16_experts && h % 32 == 0 && i % 32 == 0;
    let fits = match kind {
        OnePair::Split => true,
        OnePair::Rows(_) => {
            let aligned = |w: &MxExperts| w.blocks % 16 == 0 && w.scales % 16 == 0;
            kind.smem(h.max(i), false) <= T1_SMEM_MAX
                && kind.smem(h.max(i), true) <= T1_SMEM_MAX
                && aligned(experts.0)
                && aligned(experts.1)
        }
    };
    (sizes && fits && be.kernels.has(gate_up) && be.kernels.has(down)).then_some(kind)
}

/// `y [t*k, h]` per pair from `x [t, h]` and the pairs' expert ids, one pair a block column.
/// With `topk` (the router's logits and the weights' buffer; moe_t1 only, see
/// `OnePair::takes_topk`) the kernels pick the experts from the logits and gate_up writes
/// `ids` and the weights.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_pairs<F: Flavor>(
    be: &Cuda<F>,
    kind: OnePair,
    (x, ids, act, y): (CUdeviceptr, CUdeviceptr, CUdeviceptr, CUdeviceptr),
    (gate_up, down): (&MxExperts, &MxExperts),
    (t, k, e, h, i): (usize, usize, usize, usize, usize),
    (limit, alpha): (f32, f32),
    topk: Option<(CUdeviceptr, CUdeviceptr)>,
) -> Result<()> {
    let rows = kind.takes_topk();
    if topk.is_some() && !rows {
        return Err(gptoss_core::Error::backend(
            F::NAME,
            "internal: the split one-pair MoE kernels cannot take the top-k from the logits",
        ));
    }
    let (logits, wts) = topk.unwrap_or((0, 0));
    let pairs = blocks(t * k, 1)?;
    let err = be.err;
    let (gu_name, dn_name) = kind.names();
    let weights = |w: &MxExperts| {
        [
            Arg::Ptr(w.blocks),
            Arg::Ptr(w.scales),
            Arg::Ptr(w.bias),
            Arg::I32(w.bdt),
        ]
    };
    let sizes = [
        Arg::I32(i32_of(h, "hidden")?),
        Arg::I32(i32_of(i, "intermediate")?),
    ];
    let experts = Arg::I32(i32_of(e, "experts")?);
    let mut args = vec![
        Arg::Ptr(x),
        Arg::I32(i32_of(k, "experts per token")?),
        Arg::Ptr(ids),
        experts,
    ];
    args.extend(weights(gate_up));
    args.push(Arg::Ptr(act));
    args.extend(sizes);
    args.extend([Arg::F32(limit), Arg::F32(alpha), Arg::Ptr(err)]);
    if rows {
        args.extend([Arg::Ptr(logits), Arg::Ptr(wts)]);
    }
    let threads = kind.threads() as u32;
    be.launch(
        gu_name,
        (blocks(2 * i, kind.rows_per_block(false))?, pairs, 1),
        (threads, 1, 1),
        kind.smem(h, false) as u32,
        &args,
    )?;
    let mut args = vec![Arg::Ptr(act), Arg::Ptr(ids), experts];
    args.extend(weights(down));
    args.push(Arg::Ptr(y));
    args.extend(sizes);
    args.push(Arg::Ptr(err));
    if rows {
        args.extend([Arg::Ptr(logits), Arg::I32(i32_of(k, "experts per token")?)]);
    }
    // moe_t1_down waits for act after its first weight copies (launched early).
    let launch = match kind {
        OnePair::Rows(_) => Cuda::launch_early,
        OnePair::Split => Cuda::launch,
    };
    launch(
        be,
        dn_name,
        (blocks(h, kind.rows_per_block(true))?, pairs, 1),
        (threads, 1, 1),
        kind.smem(i, true) as u32,
        &args,
    )
}

/// The tile this path routes into: 32 pairs (the narrow kernels) unless
/// GPTOSS_CUDA_SKINNY_WIDE=1 asks for 64. H100, 20b batched decode of 16 / 64 / 128 / 256
/// sequences: 1,064 / 4,362 / 7,865 / 11,416 tok/s in 32-pair tiles against 784 / 3,008 /
/// 5,691 / 10,093 in 64-pair ones (the wide kernels' 168 registers allow 3 blocks an SM, the
/// narrow ones' 128 four, and most tiles are narrow anyway).
pub(crate) fn pairs_per_tile<F: Flavor>(be: &Cuda<F>) -> usize {
    if !be.skinny_wide && be.kernels.has("moe_skinny4_gate_up") {
        NARROW_PAIRS_PER_TILE
    } else {
        PAIRS_PER_TILE
    }
}

/// `y [t*k, h]` per pair from `x [t, h]` (`act [t*k, i]` in between), routed by `route` into
/// tiles of `tile` pairs (`pairs_per_tile`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn run<F: Flavor>(
    be: &mut Cuda<F>,
    (x, act, y): (CUdeviceptr, CUdeviceptr, CUdeviceptr),
    route: &Route,
    (gate_up, down): (&MxExperts, &MxExperts),
    (t, k, h, i): (usize, usize, usize, usize),
    tile: usize,
    (limit, alpha): (f32, f32),
) -> Result<()> {
    let pairs = t * k;
    let narrow = tile == NARROW_PAIRS_PER_TILE;
    let staged_bytes = pairs * h.max(i) * 2;
    let xs = be.take_temp(staged_bytes, "moe activations as f16")?;
    let r = (|| -> Result<()> {
        stage(be, (x, k, h), route.list, pairs, xs)?;
        let swiglu = [Arg::F32(limit), Arg::F32(alpha)];
        let gu = Projection {
            name: if narrow {
                "moe_skinny4_gate_up"
            } else {
                "moe_skinny_gate_up"
            },
            rows: 2 * i,
            tail: &swiglu,
        };
        project(be, &gu, xs, route, gate_up, act, (h, i))?;
        stage(be, (act, 1, i), route.list, pairs, xs)?;
        let dn = Projection {
            name: if narrow {
                "moe_skinny4_down"
            } else {
                "moe_skinny_down"
            },
            rows: h,
            tail: &[],
        };
        project(be, &dn, xs, route, down, y, (h, i))
    })();
    be.give_temp(staged_bytes, xs);
    r
}

/// `xs [pairs, width]` f16 in the kernels' k order: row `pos` = `a` row `list[pos] / div`.
fn stage<F: Flavor>(
    be: &Cuda<F>,
    (a, div, width): (CUdeviceptr, usize, usize),
    list: CUdeviceptr,
    pairs: usize,
    xs: CUdeviceptr,
) -> Result<()> {
    be.launch(
        "moe_skinny_stage",
        (blocks(pairs, 1)?, 1, 1),
        (128, 1, 1),
        0,
        &[
            Arg::Ptr(a),
            Arg::I32(i32_of(div, "experts per token")?),
            Arg::I32(i32_of(width, "moe width")?),
            Arg::Ptr(list),
            Arg::Ptr(xs),
        ],
    )
}

/// A projection kernel: its `rows` output rows, and the arguments
/// after the common ones (gate_up: the SwiGLU's limit and alpha).
struct Projection<'a> {
    name: &'static str,
    rows: usize,
    tail: &'a [Arg],
}

/// `out` = the projection `p` of expert weights `w` over the staged rows `xs` (`(h, i)`: the
/// model's hidden and intermediate sizes, arguments of both kernels).
fn project<F: Flavor>(
    be: &Cuda<F>,
    p: &Projection,
    xs: CUdeviceptr,
    route: &Route,
    w: &MxExperts,
    out: CUdeviceptr,
    (h, i): (usize, usize),
) -> Result<()> {
    let mut args = vec![
        Arg::Ptr(xs),
        Arg::Ptr(route.list),
        Arg::Ptr(route.tiles),
        Arg::Ptr(route.ntiles),
        Arg::Ptr(w.blocks),
        Arg::Ptr(w.scales),
        Arg::Ptr(w.bias),
        Arg::I32(w.bdt),
        Arg::Ptr(out),
        Arg::I32(i32_of(h, "hidden")?),
        Arg::I32(i32_of(i, "intermediate")?),
    ];
    args.extend_from_slice(p.tail);
    be.launch(
        p.name,
        (blocks(p.rows, ROWS_PER_BLOCK)?, grid_y(route.max_tiles)?, 1),
        ((32 * WARPS) as u32, 1, 1),
        SMEM as u32,
        &args,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_memory_fits_the_default_48_kib() {
        assert_eq!(SMEM, 4 * 6 * (32 * 16 + 32 * 4));
        // gpt-oss: hidden = intermediate = 2880.
        assert_eq!(pair_smem(2880), SMEM + 4096 + 5760);
        assert!(pair_smem(2880) <= 48 << 10);
    }

    /// E2M1 code (sign, 2 exponent bits, 1 mantissa bit) as a value.
    fn e2m1(n: u32) -> f64 {
        let (e, m) = ((n >> 1) & 3, n & 1);
        let v = if e == 0 {
            0.5 * m as f64
        } else {
            (1.0 + 0.5 * m as f64) * 2f64.powi(e as i32 - 1)
        };
        if n & 8 != 0 {
            -v
        } else {
            v
        }
    }

    /// E4M3 byte (sign, 4 exponent bits with bias 7, 3 mantissa bits) as a value.
    fn e4m3(b: u32) -> f64 {
        let (e, m) = ((b >> 3) & 15, b & 7);
        let v = if e == 0 {
            m as f64 / 8.0 * 2f64.powi(-6)
        } else {
            (1.0 + m as f64 / 8.0) * 2f64.powi(e as i32 - 7)
        };
        if b & 0x80 != 0 {
            -v
        } else {
            v
        }
    }

    #[test]
    fn codes_become_e4m3_bytes_of_their_value_times_2_to_the_minus_6() {
        // moe_t1's decode on sm_89+ (mx4_e4m3_f16x2): the low nibbles of a word's 4 bytes by
        // ((q << 4) & 0x80808080) | ((q << 2) & 0x1c1c1c1c), the high ones by
        // (q & 0x80808080) | ((q >> 2) & 0x1c1c1c1c); each result byte must be the E4M3
        // encoding of its code's value times 2^-6 (t1_factor adds the 6 back), whatever the
        // word's other bytes hold.
        let lo = |q: u32| ((q << 4) & 0x8080_8080) | ((q << 2) & 0x1c1c_1c1c);
        let hi = |q: u32| (q & 0x8080_8080) | ((q >> 2) & 0x1c1c_1c1c);
        for byte in 0..=255u32 {
            for pos in 0..4 {
                for fill in [0u32, 0xffff_ffff, 0x5a5a_5a5a] {
                    let q = (fill & !(0xff << (8 * pos))) | (byte << (8 * pos));
                    let (l, h) = ((lo(q) >> (8 * pos)) & 0xff, (hi(q) >> (8 * pos)) & 0xff);
                    assert_eq!(e4m3(l), e2m1(byte & 15) / 64.0, "byte {byte:#x} at {pos}");
                    assert_eq!(e4m3(h), e2m1(byte >> 4) / 64.0, "byte {byte:#x} at {pos}");
                }
            }
        }
    }

    #[test]
    fn rows_kernels_fit_one_wave_on_hopper() {
        // moe_t1 for gpt-oss (2880 inputs, four experts of one token): gate_up's and down's
        // blocks are one wave on an H100's 132 SMs only if enough share an SM's 228 KiB (1 KiB
        // of it reserved a block) and its 64K registers (56 a thread).
        for kind in T1_SHAPES.iter().map(OnePair::Rows) {
            for down in [false, true] {
                let smem = kind.smem(2880, down);
                assert!(smem <= T1_SMEM_MAX, "{kind:?} {smem}");
                let by_smem = (228 << 10) / (smem + 1024);
                let by_regs = 65536 / (56 * kind.threads());
                let blocks =
                    (2880usize * if down { 1 } else { 2 }).div_ceil(kind.rows_per_block(down));
                assert!(
                    4 * blocks <= 132 * by_smem.min(by_regs),
                    "{kind:?} down {down}: {blocks} x 4 blocks, {by_smem} / {by_regs} an SM"
                );
            }
        }
    }
}
