//! MoeMxfp4: mixture of MXFP4 experts with the clamped SwiGLU of gpt-oss.
//!
//! Tokens are grouped by expert; experts run in ascending id order, and each needed weight
//! row is decoded once per call into a per-thread buffer and applied to every token routed
//! to that expert. Results accumulate into the output in f32, expert by expert (the order of
//! transformers' CPU loop).

use gptoss_core::host::{HostKernel, HostTensor};
use gptoss_core::mxfp4::{decode_row, BLOCK_BYTES, BLOCK_VALUES};
use gptoss_core::{Error, Op, Result};
use rayon::prelude::*;

use super::{arity, bytes, dims2, f32s, f32s_mut, i32s, want_shape, wrong_op};
use crate::math::{dot, sigmoid};
use crate::Pool;

/// in: x [T, H], ids [T, k] I32, weights [T, k],
///     gate_up_blocks [E, 2I, H/32, 16], gate_up_scales [E, 2I, H/32], gate_up_bias [E, 2I],
///     down_blocks [E, H, I/32, 16], down_scales [E, H, I/32], down_bias [E, H]
/// out: [T, H].
pub struct MoeMxfp4 {
    pool: Pool,
}

impl MoeMxfp4 {
    pub fn new(pool: Pool) -> Self {
        MoeMxfp4 { pool }
    }
}

/// One expert's MXFP4 matrix: `rows` rows of `groups` blocks, plus a bias per row.
struct Mat<'a> {
    blocks: &'a [u8],
    scales: &'a [u8],
    bias: &'a [f32],
    groups: usize,
}

impl Mat<'_> {
    /// `out[r * n + j] = row_r . xs[j] + bias[r]` for the `n` input vectors in `xs`, parallel
    /// over rows; each row is decoded once. Call inside the pool.
    fn apply(&self, xs: &[f32], n: usize, out: &mut [f32]) {
        let (g, width) = (self.groups, self.groups * BLOCK_VALUES);
        out.par_chunks_mut(n)
            .enumerate()
            .with_min_len(8)
            .for_each_init(
                || vec![0f32; width],
                |row, (r, o)| {
                    decode_row(
                        &self.blocks[r * g * BLOCK_BYTES..(r + 1) * g * BLOCK_BYTES],
                        &self.scales[r * g..(r + 1) * g],
                        row,
                    );
                    for (y, x) in o.iter_mut().zip(xs.chunks_exact(width)) {
                        *y = dot(x, row) + self.bias[r];
                    }
                },
            );
    }
}

/// The clamped SwiGLU with +1 of one (gate, up) pair.
pub fn swiglu(gate: f32, up: f32, limit: f32, alpha: f32) -> f32 {
    let gate = gate.min(limit);
    let up = up.clamp(-limit, limit);
    let glu = gate * sigmoid(gate * alpha);
    (up + 1.0) * glu
}

impl HostKernel for MoeMxfp4 {
    fn run(&self, op: &Op, inputs: &[&HostTensor], outputs: &mut [&mut HostTensor]) -> Result<()> {
        let Op::MoeMxfp4 {
            swiglu_limit,
            alpha,
        } = *op
        else {
            return Err(wrong_op("moe_mxfp4", op));
        };
        arity(op, inputs, outputs, &[9], 1)?;
        let [x, ids, weights, gub, gus, gu_bias, dnb, dns, dn_bias] = inputs else {
            return Err(wrong_op("moe_mxfp4", op));
        };
        let (t, h) = dims2(x)?;
        let (_, k) = dims2(ids)?;
        want_shape(ids, &[t, k])?;
        want_shape(weights, &[t, k])?;
        let (e, two_i, g) = match gub.desc.shape.dims() {
            [e, r, g, 16] => (*e, *r, *g),
            d => {
                return Err(Error::tensor(
                    &gub.name,
                    format!("expected [E, 2I, H/32, 16], got {d:?}"),
                ))
            }
        };
        if g * BLOCK_VALUES != h || two_i % 2 != 0 {
            return Err(Error::tensor(
                &gub.name,
                format!("gate_up blocks [{e}, {two_i}, {g}, 16] do not fit hidden size {h} (need {} groups, even rows)", h / 32),
            ));
        }
        let i = two_i / 2;
        if i % BLOCK_VALUES != 0 {
            return Err(Error::tensor(
                &gub.name,
                format!("intermediate size {i} is not a multiple of 32"),
            ));
        }
        let g2 = i / BLOCK_VALUES;
        want_shape(gus, &[e, two_i, g])?;
        want_shape(gu_bias, &[e, two_i])?;
        want_shape(dnb, &[e, h, g2, BLOCK_BYTES])?;
        want_shape(dns, &[e, h, g2])?;
        want_shape(dn_bias, &[e, h])?;
        want_shape(outputs[0], &[t, h])?;
        let (xd, idd, wd) = (f32s(x)?, i32s(ids)?, f32s(weights)?);
        let (gub, gus, gu_bias) = (bytes(gub)?, bytes(gus)?, f32s(gu_bias)?);
        let (dnb, dns, dn_bias) = (bytes(dnb)?, bytes(dns)?, f32s(dn_bias)?);
        // Group (token, weight) pairs by expert, checking every id first; -1 is an expert
        // of another shard and contributes nothing here.
        let mut routed: Vec<Vec<(usize, f32)>> = vec![Vec::new(); e];
        for (n, (&id, &w)) in idd.iter().zip(wd).enumerate() {
            if id == -1 {
                continue;
            }
            if id < 0 || id as usize >= e {
                return Err(Error::Input(format!(
                    "moe: token {} routed to expert {id}, but there are {e} experts (ids 0..{e})",
                    n / k.max(1)
                )));
            }
            routed[id as usize].push((n / k, w));
        }
        let out = f32s_mut(outputs[0])?;
        out.fill(0.0);
        if h == 0 {
            return Ok(());
        }
        self.pool.install(|| {
            for (ex, tokens) in routed.iter().enumerate().filter(|(_, r)| !r.is_empty()) {
                let n = tokens.len();
                let xs: Vec<f32> = tokens
                    .iter()
                    .flat_map(|&(ti, _)| &xd[ti * h..(ti + 1) * h])
                    .copied()
                    .collect();
                // gate_up, transposed: gu[r * n + j] for row r, token j.
                let gate_up = Mat {
                    blocks: &gub[ex * two_i * g * BLOCK_BYTES..(ex + 1) * two_i * g * BLOCK_BYTES],
                    scales: &gus[ex * two_i * g..(ex + 1) * two_i * g],
                    bias: &gu_bias[ex * two_i..(ex + 1) * two_i],
                    groups: g,
                };
                let mut gu = vec![0f32; two_i * n];
                gate_up.apply(&xs, n, &mut gu);
                // act[j * I + c] from the interleaved rows: gate = row 2c, up = row 2c + 1.
                let mut act = vec![0f32; n * i];
                for (j, a) in act.chunks_exact_mut(i).enumerate() {
                    for (c, a) in a.iter_mut().enumerate() {
                        *a = swiglu(
                            gu[2 * c * n + j],
                            gu[(2 * c + 1) * n + j],
                            swiglu_limit,
                            alpha,
                        );
                    }
                }
                let down = Mat {
                    blocks: &dnb[ex * h * g2 * BLOCK_BYTES..(ex + 1) * h * g2 * BLOCK_BYTES],
                    scales: &dns[ex * h * g2..(ex + 1) * h * g2],
                    bias: &dn_bias[ex * h..(ex + 1) * h],
                    groups: g2,
                };
                let mut y = vec![0f32; h * n];
                down.apply(&act, n, &mut y);
                for (j, &(ti, w)) in tokens.iter().enumerate() {
                    for (r, o) in out[ti * h..(ti + 1) * h].iter_mut().enumerate() {
                        *o += y[r * n + j] * w;
                    }
                }
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use gptoss_core::host::HostTensor;
    use gptoss_core::{DType, Op, TensorDesc};

    const H: usize = 32;
    const I: usize = 32;

    /// MXFP4 weights of `e` experts with `rows` rows of 32 values (one block each), all zero
    /// except the given (expert, row, column, code, scale) entries.
    fn mxfp4(
        name: &str,
        e: usize,
        rows: usize,
        entries: &[(usize, usize, usize, u8, u8)],
    ) -> (HostTensor, HostTensor) {
        let mut blocks = vec![0u8; e * rows * 16];
        let mut scales = vec![127u8; e * rows];
        for &(ex, r, c, code, scale) in entries {
            let byte = &mut blocks[(ex * rows + r) * 16 + c / 2];
            *byte |= if c % 2 == 0 { code } else { code << 4 };
            scales[ex * rows + r] = scale;
        }
        (
            HostTensor::from_bytes(
                format!("{name}_blocks"),
                TensorDesc::new(DType::Mxfp4Blocks, [e, rows, 1, 16]),
                blocks,
            ),
            HostTensor::from_bytes(
                format!("{name}_scales"),
                TensorDesc::new(DType::E8m0Scales, [e, rows, 1]),
                scales,
            ),
        )
    }

    const OP: Op = Op::MoeMxfp4 {
        swiglu_limit: 7.0,
        alpha: 1.702,
    };

    fn sig(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }

    /// Two experts. Expert 0, for x = [2, 0, ...]:
    ///   gu row 0 (gate 0) = 6.0 * 2 - 2 = 10 -> clamped to 7
    ///   gu row 1 (up 0)   = -4.0 * 2 - 1 = -9 -> clamped to -7
    ///   gu row 2 (gate 1) = 0 + 1 = 1;  gu row 3 (up 1) = 0.5 * 2 = 1
    ///   gu row 4 (gate 2) = -10 (bias only; no lower clamp); gu row 5 (up 2) = 0
    ///   down row r picks act[r] for r < 3 (weight 1.0); down bias[3] = 0.25.
    /// Expert 1: all weights zero, down bias 1 everywhere.
    fn experts() -> Vec<HostTensor> {
        let (gub, gus) = mxfp4(
            "gate_up",
            2,
            2 * I,
            &[
                (0, 0, 0, 7, 127),  // 6.0
                (0, 1, 0, 14, 127), // -4.0
                (0, 3, 0, 1, 127),  // 0.5
            ],
        );
        let mut gu_bias = vec![0f32; 2 * 2 * I];
        gu_bias[0] = -2.0;
        gu_bias[1] = -1.0;
        gu_bias[2] = 1.0;
        gu_bias[4] = -10.0;
        let (dnb, dns) = mxfp4(
            "down",
            2,
            H,
            &[(0, 0, 0, 2, 127), (0, 1, 1, 2, 127), (0, 2, 2, 4, 126)],
        );
        let mut dn_bias = vec![0f32; 2 * H];
        dn_bias[3] = 0.25;
        dn_bias[H..].fill(1.0);
        vec![
            gub,
            gus,
            f("gate_up_bias", &[2, 2 * I], gu_bias),
            dnb,
            dns,
            f("down_bias", &[2, H], dn_bias),
        ]
    }

    /// Expert 0's output for x = [2, 0, ...], by hand.
    fn expert0() -> Vec<f64> {
        let a = 1.702;
        let act0 = (-7.0 + 1.0) * 7.0 * sig(a * 7.0); // gate 10 -> 7, up -9 -> -7
        let act1 = (1.0 + 1.0) * 1.0 * sig(a); // the +1 on up
        let act2 = (0.0 + 1.0) * -10.0 * sig(-10.0 * a); // gate not clamped from below
        let mut y = vec![0.0; H];
        y[0] = act0;
        y[1] = act1;
        y[2] = act2; // code 4 (2.0) at scale 2^-1 = 1.0
        y[3] = 0.25;
        y
    }

    fn moe(
        x: Vec<f32>,
        ids: Vec<i32>,
        w: Vec<f32>,
        t: usize,
        k: usize,
    ) -> gptoss_core::Result<Vec<f32>> {
        let x = f("x", &[t, H], x);
        let ids = i("ids", &[t, k], ids);
        let w = f("w", &[t, k], w);
        let ex = experts();
        let mut ins: Vec<&HostTensor> = vec![&x, &ids, &w];
        ins.extend(ex.iter());
        let out = run(OP, &ins, vec![out_f32("y", &[t, H])])?;
        Ok(out[0].f32().unwrap().to_vec())
    }

    fn x2() -> Vec<f32> {
        let mut x = vec![0f32; H];
        x[0] = 2.0;
        x
    }

    #[test]
    fn clamped_swiglu_by_hand() {
        let y = moe(x2(), vec![0], vec![1.0], 1, 1).unwrap();
        let want = expert0();
        assert_close(&y, &want, 1e-6);
        // The checks the numbers encode: clamp to 7 / -7 gives -42 * sigmoid(11.9) ~ -42.
        assert!((y[0] + 42.0).abs() < 1e-3, "{}", y[0]);
        // +1 on up: 2 * sigmoid(1.702) ~ 1.69, not 0.85.
        assert!((y[1] - 1.6915).abs() < 1e-3, "{}", y[1]);
        // No lower clamp on gate: -10 * sigmoid(-17.02) ~ -4e-7, not -7 * sigmoid(-11.9) ~ -4.6e-5.
        assert!(y[2] > -1e-6 && y[2] < 0.0, "{}", y[2]);
        assert!(y[4..].iter().all(|v| *v == 0.0));
    }

    #[test]
    fn swiglu_formula() {
        assert_eq!(
            super::swiglu(10.0, -9.0, 7.0, 1.702),
            super::swiglu(7.0, -7.0, 7.0, 1.702)
        );
        assert_eq!(super::swiglu(0.0, 5.0, 7.0, 1.702), 0.0);
        let v = super::swiglu(1.0, 0.0, 7.0, 1.0) as f64;
        assert!((v - sig(1.0)).abs() < 1e-7);
    }

    #[test]
    fn routing_weights_combine_experts_per_token() {
        // Token 0: experts [0, 1] weights [0.75, 0.25]; token 1: experts [1, 0] weights [0.6, 0.4],
        // with x = 0 (expert 0 then gives act from biases only).
        let mut x = x2();
        x.extend(vec![0f32; H]);
        let y = moe(x, vec![0, 1, 1, 0], vec![0.75, 0.25, 0.6, 0.4], 2, 2).unwrap();
        let e0 = expert0();
        let mut want: Vec<f64> = e0.iter().map(|v| 0.75 * v + 0.25).collect();
        // Expert 0 at x = 0: gate 0 = -2, up 0 = -1 -> act0 = 0 * glu = 0; gate 1 = 1, up 1 = 0 ->
        // act1 = sigmoid(1.702); gate 2 = -10, up 2 = 0 -> act2 as before.
        let a = 1.702;
        let mut e0_zero = vec![0.0; H];
        e0_zero[0] = (-1.0 + 1.0) * -2.0 * sig(-2.0 * a);
        e0_zero[1] = 1.0 * sig(a);
        e0_zero[2] = -10.0 * sig(-10.0 * a);
        e0_zero[3] = 0.25;
        want.extend(e0_zero.iter().map(|v| 0.4 * v + 0.6));
        assert_close(&y, &want, 1e-6);
    }

    #[test]
    fn gate_and_up_are_interleaved_not_halves() {
        // Only gu row 1 (up 0) and row 32 (would be "up 0" with halves) get biases; gate 0
        // (row 0) = 1. Interleaved: act0 = (up0 + 1) * glu(1) with up0 = 3.
        let (gub, gus) = mxfp4("gate_up", 1, 2 * I, &[]);
        let mut bias = vec![0f32; 2 * I];
        bias[0] = 1.0;
        bias[1] = 3.0;
        bias[32] = 5.0;
        let (dnb, dns) = mxfp4("down", 1, H, &[(0, 0, 0, 2, 127)]);
        let (x, ids, w) = (
            f("x", &[1, H], vec![0.0; H]),
            i("ids", &[1, 1], vec![0]),
            f("w", &[1, 1], vec![1.0]),
        );
        let (gb, db) = (f("gub", &[1, 2 * I], bias), f("db", &[1, H], vec![0.0; H]));
        let out = run(
            OP,
            &[&x, &ids, &w, &gub, &gus, &gb, &dnb, &dns, &db],
            vec![out_f32("y", &[1, H])],
        )
        .unwrap();
        let y = out[0].f32().unwrap();
        assert!((y[0] as f64 - 4.0 * sig(1.702)).abs() < 1e-6, "{}", y[0]);
    }

    #[test]
    fn expert_id_out_of_range_is_an_error() {
        for bad in [2, -2] {
            let err = moe(x2(), vec![bad], vec![1.0], 1, 1).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("expert {bad}")) && msg.contains("2 experts"),
                "{msg}"
            );
        }
    }

    #[test]
    fn expert_of_another_shard_contributes_nothing() {
        // Token 0 routes to experts 1 and -1 (held elsewhere): only expert 1's share remains.
        let both = moe(x2(), vec![1, 0], vec![0.25, 0.75], 1, 2).unwrap();
        let one = moe(x2(), vec![1, -1], vec![0.25, 0.75], 1, 2).unwrap();
        let alone = moe(x2(), vec![1], vec![0.25], 1, 1).unwrap();
        assert_eq!(one, alone);
        assert_ne!(one, both);
    }
}
