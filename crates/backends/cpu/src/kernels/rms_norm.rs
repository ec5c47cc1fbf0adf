//! RmsNorm: y = x * (1 / sqrt(mean(x^2) + eps)) * w, all in f32 (GptOssRMSNorm order).

use gptoss_core::host::{HostKernel, HostTensor};
use gptoss_core::{Op, Result};
use rayon::prelude::*;

use super::{arity, dims2, f32s, f32s_mut, rows_per_task, want_shape, wrong_op};
use crate::math::sum_squares;
use crate::Pool;

/// in: x [T, H], weight [H] -> out [T, H].
pub struct RmsNorm {
    pool: Pool,
}

impl RmsNorm {
    pub fn new(pool: Pool) -> Self {
        RmsNorm { pool }
    }
}

/// Normalise one row into `out`.
pub fn rms_norm_row(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let var = sum_squares(x) / x.len() as f32;
    let inv = 1.0 / (var + eps).sqrt();
    for ((o, x), w) in out.iter_mut().zip(x).zip(w) {
        *o = w * (x * inv);
    }
}

impl HostKernel for RmsNorm {
    fn run(&self, op: &Op, inputs: &[&HostTensor], outputs: &mut [&mut HostTensor]) -> Result<()> {
        let Op::RmsNorm { eps } = *op else {
            return Err(wrong_op("rms_norm", op));
        };
        arity(op, inputs, outputs, &[2], 1)?;
        let (t, h) = dims2(inputs[0])?;
        want_shape(inputs[1], &[h])?;
        want_shape(outputs[0], &[t, h])?;
        let (x, w) = (f32s(inputs[0])?, f32s(inputs[1])?);
        let out = f32s_mut(outputs[0])?;
        if t == 0 || h == 0 {
            return Ok(());
        }
        let rows = rows_per_task(t, self.pool.threads(), 4);
        self.pool.install(|| {
            out.par_chunks_mut(rows * h)
                .zip(x.par_chunks(rows * h))
                .for_each(|(o, x)| {
                    for (o, x) in o.chunks_exact_mut(h).zip(x.chunks_exact(h)) {
                        rms_norm_row(x, w, eps, o);
                    }
                })
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use gptoss_core::Op;

    #[test]
    fn normalises_each_row_and_applies_the_weight() {
        // Row 0: mean(x^2) = (1 + 4 + 9 + 16) / 4 = 7.5. Row 1: all 2 -> mean 4, inv ~ 1/2.
        let x = f("x", &[2, 4], vec![1.0, 2.0, 3.0, 4.0, 2.0, -2.0, 2.0, -2.0]);
        let w = f("w", &[4], vec![1.0, 0.5, 2.0, -1.0]);
        let out = run(
            Op::RmsNorm { eps: 1e-5 },
            &[&x, &w],
            vec![out_f32("y", &[2, 4])],
        )
        .unwrap();
        let inv0 = 1.0 / (7.5f64 + 1e-5).sqrt();
        let inv1 = 1.0 / (4.0f64 + 1e-5).sqrt();
        let want = [
            inv0,
            2.0 * 0.5 * inv0,
            3.0 * 2.0 * inv0,
            -4.0 * inv0,
            2.0 * inv1,
            -inv1,
            4.0 * inv1,
            2.0 * inv1,
        ];
        assert_close(out[0].f32().unwrap(), &want, 1e-6);
        // eps matters for a zero row: 0 * (1/sqrt(eps)) * w = 0, not NaN.
        let z = f("z", &[1, 4], vec![0.0; 4]);
        let out = run(
            Op::RmsNorm { eps: 1e-5 },
            &[&z, &w],
            vec![out_f32("y", &[1, 4])],
        )
        .unwrap();
        assert_eq!(out[0].f32().unwrap(), &[0.0, 0.0, 0.0, -0.0]);
    }

    #[test]
    fn weight_of_the_wrong_length_is_an_error() {
        let x = f("x", &[1, 4], vec![1.0; 4]);
        let w = f("w", &[3], vec![1.0; 3]);
        assert!(run(
            Op::RmsNorm { eps: 1e-5 },
            &[&x, &w],
            vec![out_f32("y", &[1, 4])]
        )
        .is_err());
    }
}
