//! Large-T bf16 products through cuBLAS: the dense Linear (bf16 weights) and, with
//! `--dequantize`, the MoE experts, as bf16 GEMMs with f32 accumulation (cublasGemmEx), fed by small kernels of mma.cu that round the
//! f32 activations to bf16 exactly as the tensor-core kernels do, and that add the biases and
//! the SwiGLU.
//!
//! Layout: our matrices are row-major, cuBLAS's column-major. `y [t, n] = x [t, k] W^T` with W
//! row-major [n, k] is, column-major, `Y (n x t, ld n) = op(A) B` where A is W read as a k x n
//! column-major matrix (ld k) transposed (OP_T) and B is x read as k x t (ld k, OP_N).
//!
//! CUDA graphs: a GEMM is recorded like a kernel launch (driver::CUBLAS_GEMM), so a step that
//! repeats could be captured with it; the handle has its own workspace, so a captured GEMM
//! would allocate nothing. In practice such steps are not captured: the MoE needs each
//! expert's pair count on the host, so it issues what the step recorded so far, synchronises
//! once a layer and runs the rest of the step directly. Only steps of >= GPTOSS_CUDA_MMA_MIN_T
//! tokens come here (prefill, batched decode of that many sequences); one-token decode steps,
//! the ones replayed as graphs, run the GEMV kernels.

use gptoss_core::Result;

use crate::cublas::{Gemm, OP_N, OP_T};
use crate::driver::{Arg, CUdeviceptr};
use crate::ops::{blocks, i32_of};
use crate::{Cuda, Flavor};

/// `y [t, n] = x [t, k] W^T` (bf16 `w`, f32 `x` and `y`, f32 accumulation) through cuBLAS.
fn gemm_rows<F: Flavor>(
    be: &Cuda<F>,
    (x_bf16, w, y): (CUdeviceptr, CUdeviceptr, CUdeviceptr),
    (t, n, k): (usize, usize, usize),
) -> Result<()> {
    be.gpu.gemm(Gemm {
        trans_a: OP_T,
        trans_b: OP_N,
        m: i32_of(n, "out features")?,
        n: i32_of(t, "rows")?,
        k: i32_of(k, "in features")?,
        a: w,
        lda: i32_of(k, "in features")?,
        b: x_bf16,
        ldb: i32_of(k, "in features")?,
        c: y,
        ldc: i32_of(n, "out features")?,
    })
}

/// `out [n] = bf16(x [n])` (round to nearest even).
fn to_bf16<F: Flavor>(be: &Cuda<F>, x: CUdeviceptr, out: CUdeviceptr, n: usize) -> Result<()> {
    be.launch(
        "f32_to_bf16",
        (blocks(n.div_ceil(2), 256)?, 1, 1),
        (256, 1, 1),
        0,
        &[Arg::Ptr(x), Arg::Ptr(out), Arg::I64(n as i64)],
    )
}

/// Whether a Linear of `t` tokens over weights of dtype bf16 takes cuBLAS: cuBLAS is on (see
/// `Cuda::cublas`) and `t` is in the tensor-core range.
pub(crate) fn linear_fits<F: Flavor>(be: &Cuda<F>, bf16_weights: bool, t: usize) -> bool {
    be.gpu.has_cublas() && bf16_weights && t >= be.mma_min_t && t <= be.cublas_linear_max_t
}

/// `y [t, n] = x [t, k] W^T + bias` (bias 0: none; `bdt` its dtype code).
pub(crate) fn linear<F: Flavor>(
    be: &mut Cuda<F>,
    (x, w, bias, bdt, y): (CUdeviceptr, CUdeviceptr, CUdeviceptr, i32, CUdeviceptr),
    (t, n, k): (usize, usize, usize),
) -> Result<()> {
    let bytes = t * k * 2;
    let xb = be.take_temp(bytes, "linear input as bf16")?;
    let run = (|| -> Result<()> {
        to_bf16(be, x, xb, t * k)?;
        gemm_rows(be, (xb, w, y), (t, n, k))?;
        if bias == 0 {
            return Ok(());
        }
        be.launch(
            "add_bias_rows",
            (blocks(t * n, 256)?, 1, 1),
            (256, 1, 1),
            0,
            &[
                Arg::Ptr(y),
                Arg::Ptr(bias),
                Arg::I32(bdt),
                Arg::I32(i32_of(t, "tokens")?),
                Arg::I32(i32_of(n, "out features")?),
            ],
        )
    })();
    // Stream order makes the scratch safe to reuse by later launches.
    be.give_temp(bytes, xb);
    run
}

/// One projection of the experts: bf16 rows [E, n, k] and a bias [E, n] of dtype code `bdt`.
#[derive(Clone, Copy)]
pub(crate) struct Experts {
    pub w: CUdeviceptr,
    pub bias: CUdeviceptr,
    pub bdt: i32,
}

/// The shapes of a MoE node: tokens, experts per token, experts, hidden, intermediate.
#[derive(Clone, Copy)]
pub(crate) struct MoeDims {
    pub t: usize,
    pub k: usize,
    pub e: usize,
    pub h: usize,
    pub i: usize,
}

/// Each expert's run of the routed pairs, `(expert, start, end)` into the pair list, from
/// `moe_route`'s tile table with one tile per expert; only runs inside `experts` and `pairs`.
fn expert_runs(
    raw: &[u8],
    max_tiles: usize,
    experts: usize,
    pairs: usize,
) -> Vec<(usize, usize, usize)> {
    let word = |i: usize| i32::from_le_bytes(raw[4 * i..4 * i + 4].try_into().expect("4 bytes"));
    let n = (word(3 * max_tiles).max(0) as usize).min(max_tiles);
    (0..n)
        .map(|j| (word(3 * j), word(3 * j + 1), word(3 * j + 2)))
        .filter(|(e, s, end)| *e >= 0 && *s >= 0 && end > s)
        .map(|(e, s, end)| (e as usize, s as usize, end as usize))
        .filter(|(e, _, end)| *e < experts && *end <= pairs)
        .collect()
}

/// The dequantized MoE experts of `d.t` tokens: `y [t*k, h]` per (token, slot) pair, for
/// pairs routed to a local expert (the combine reads only those).
pub(crate) fn moe<F: Flavor>(
    be: &mut Cuda<F>,
    (x, ids, y): (CUdeviceptr, CUdeviceptr, CUdeviceptr),
    (gate_up, down): (Experts, Experts),
    d: MoeDims,
    (limit, alpha): (f32, f32),
) -> Result<()> {
    let pairs = d.t * d.k;
    // One tile per expert: moe_route with tiles as large as all the pairs.
    let max_tiles = d.e + 1;
    let table = max_tiles * 12 + 16;
    let list = be.take_temp(pairs * 4, "moe pair list")?;
    let tiles = match be.take_temp(table, "moe expert runs") {
        Ok(p) => p,
        Err(e) => {
            be.give_temp(pairs * 4, list);
            return Err(e);
        }
    };
    let runs = (|| -> Result<Vec<(usize, usize, usize)>> {
        be.launch(
            "moe_route",
            (1, 1, 1),
            (1024, 1, 1),
            (3 * d.e * 4) as u32,
            &[
                Arg::Ptr(ids),
                Arg::I32(i32_of(pairs, "pairs")?),
                Arg::I32(i32_of(d.e, "experts")?),
                Arg::I32(i32_of(pairs.max(1), "pairs")?),
                Arg::Ptr(list),
                Arg::Ptr(tiles),
                Arg::Ptr(tiles + (max_tiles * 12) as u64),
                Arg::I32(i32_of(max_tiles, "experts")?),
                Arg::Ptr(be.err),
            ],
        )?;
        // The counts are needed on the host to size each GEMM.
        be.gpu.stop_recording()?;
        let mut raw = vec![0u8; max_tiles * 12 + 4];
        be.gpu.dtoh(&mut raw, tiles)?;
        Ok(expert_runs(&raw, max_tiles, d.e, pairs))
    })();
    be.give_temp(table, tiles);
    let r = runs.and_then(|runs| {
        experts(
            be,
            (x, ids, list, y),
            &runs,
            (gate_up, down),
            d,
            (limit, alpha),
        )
    });
    be.give_temp(pairs * 4, list);
    r
}

/// The GEMMs and their feeding kernels over the routed rows (`runs`: each expert's rows of
/// the pair list).
fn experts<F: Flavor>(
    be: &mut Cuda<F>,
    (x, ids, list, y): (CUdeviceptr, CUdeviceptr, CUdeviceptr, CUdeviceptr),
    runs: &[(usize, usize, usize)],
    (gate_up, down): (Experts, Experts),
    d: MoeDims,
    (limit, alpha): (f32, f32),
) -> Result<()> {
    let rows = runs.iter().map(|r| r.2).max().unwrap_or(0);
    if rows == 0 {
        return Ok(()); // no pair routed to this shard's experts
    }
    let (h, i) = (d.h, d.i);
    let pairs = d.t * d.k;
    // Two buffers, each reused once its first use is over (stream order): the bf16 operands
    // (x rows, then the activations) and the f32 products (gate_up, then down). Sized by
    // `pairs` (not `rows`), so repeated steps reuse the same pool entries.
    let sizes = [pairs * h.max(i) * 2, pairs * (2 * i).max(h) * 4];
    let operands = be.take_temp(sizes[0], "moe bf16 operands")?;
    let products = match be.take_temp(sizes[1], "moe products") {
        Ok(p) => p,
        Err(e) => {
            be.give_temp(sizes[0], operands);
            return Err(e);
        }
    };
    let (xs, act) = (operands, operands);
    let (gu, ys) = (products, products);
    let run = (|| -> Result<()> {
        be.launch(
            "moe_gather_bf16",
            (blocks(rows, 1)?, blocks(h, 512)?, 1),
            (256, 1, 1),
            0,
            &[
                Arg::Ptr(x),
                Arg::I32(i32_of(d.k, "experts per token")?),
                Arg::Ptr(list),
                Arg::I32(i32_of(h, "hidden")?),
                Arg::Ptr(xs),
            ],
        )?;
        for &(e, s, end) in runs {
            let w = gate_up.w + (e * 2 * i * h * 2) as u64;
            let (a, c) = (xs + (s * h * 2) as u64, gu + (s * 2 * i * 4) as u64);
            gemm_rows(be, (a, w, c), (end - s, 2 * i, h))?;
        }
        be.launch(
            "moe_swiglu_bf16",
            (blocks(rows, 1)?, blocks(i, 256)?, 1),
            (256, 1, 1),
            0,
            &[
                Arg::Ptr(gu),
                Arg::Ptr(list),
                Arg::Ptr(ids),
                Arg::Ptr(gate_up.bias),
                Arg::I32(gate_up.bdt),
                Arg::I32(i32_of(i, "intermediate")?),
                Arg::F32(limit),
                Arg::F32(alpha),
                Arg::Ptr(act),
            ],
        )?;
        for &(e, s, end) in runs {
            let w = down.w + (e * h * i * 2) as u64;
            let (a, c) = (act + (s * i * 2) as u64, ys + (s * h * 4) as u64);
            gemm_rows(be, (a, w, c), (end - s, h, i))?;
        }
        be.launch(
            "moe_scatter_bias",
            (blocks(rows, 1)?, blocks(h, 256)?, 1),
            (256, 1, 1),
            0,
            &[
                Arg::Ptr(ys),
                Arg::Ptr(list),
                Arg::Ptr(ids),
                Arg::Ptr(down.bias),
                Arg::I32(down.bdt),
                Arg::I32(i32_of(h, "hidden")?),
                Arg::Ptr(y),
            ],
        )
    })();
    be.give_temp(sizes[0], operands);
    be.give_temp(sizes[1], products);
    run
}

#[cfg(test)]
mod tests {
    use super::expert_runs;

    fn table(tiles: &[[i32; 3]], max_tiles: usize, n: i32) -> Vec<u8> {
        let mut w = vec![0i32; 3 * max_tiles + 1];
        for (j, t) in tiles.iter().enumerate() {
            w[3 * j..3 * j + 3].copy_from_slice(t);
        }
        w[3 * max_tiles] = n;
        w.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn expert_runs_read_the_route_table() {
        let raw = table(&[[0, 0, 5], [3, 5, 6], [7, 6, 12]], 9, 3);
        let runs = vec![(0, 0, 5), (3, 5, 6), (7, 6, 12)];
        assert_eq!(expert_runs(&raw, 9, 8, 12), runs);
        // A count past the table is clamped; empty, negative and out-of-range entries are
        // skipped.
        let raw = table(
            &[[1, 0, 0], [2, 0, 4], [-1, 4, 5], [9, 5, 6], [3, 6, 99]],
            5,
            99,
        );
        assert_eq!(expert_runs(&raw, 5, 8, 12), vec![(2, 0, 4)]);
        assert!(expert_runs(&table(&[], 4, 0), 4, 8, 12).is_empty());
    }
}
