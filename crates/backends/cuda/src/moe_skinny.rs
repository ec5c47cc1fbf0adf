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

/// Whether a few-token MoE (below the grouped paths' token count) takes the one-pair kernels:
/// MXFP4 experts, the kernels built, GPTOSS_CUDA_PAIR_MOE not 0.
pub(crate) fn pairs_fit<F: Flavor>(
    be: &Cuda<F>,
    bf16_experts: bool,
    (h, i): (usize, usize),
) -> bool {
    be.pair_moe && !bf16_experts && h % 32 == 0 && i % 32 == 0 && be.kernels.has("moe_pair_gate_up")
}

/// `y [t*k, h]` per pair from `x [t, h]` and the pairs' expert ids, one pair a block.
pub(crate) fn run_pairs<F: Flavor>(
    be: &Cuda<F>,
    (x, ids, act, y): (CUdeviceptr, CUdeviceptr, CUdeviceptr, CUdeviceptr),
    (gate_up, down): (&MxExperts, &MxExperts),
    (t, k, e, h, i): (usize, usize, usize, usize, usize),
    (limit, alpha): (f32, f32),
) -> Result<()> {
    let pairs = blocks(t * k, 1)?;
    let err = be.err;
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
    be.launch(
        "moe_pair_gate_up",
        (blocks(2 * i, 32)?, pairs, 1),
        ((32 * WARPS) as u32, 1, 1),
        pair_smem(h) as u32,
        &args,
    )?;
    let mut args = vec![Arg::Ptr(act), Arg::Ptr(ids), experts];
    args.extend(weights(down));
    args.push(Arg::Ptr(y));
    args.extend(sizes);
    args.push(Arg::Ptr(err));
    be.launch(
        "moe_pair_down",
        (blocks(h, 32)?, pairs, 1),
        ((32 * WARPS) as u32, 1, 1),
        pair_smem(i) as u32,
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
}
