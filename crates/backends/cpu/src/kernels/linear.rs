//! Linear: y = x W^T + b with W stored [out, in].

use gptoss_core::host::{HostKernel, HostTensor};
use gptoss_core::{Error, Op, Result};
use rayon::prelude::*;

use super::{arity, dims2, f32s, f32s_mut, rows_per_task, want_shape, wrong_op};
use crate::math::dot;
use crate::Pool;

/// in: x [T, K], weight [N, K], optional bias [N] -> out [T, N].
pub struct Linear {
    pool: Pool,
}

impl Linear {
    pub fn new(pool: Pool) -> Self {
        Linear { pool }
    }
}

/// `out[t, n] = x[t] . w[n] + b[n]`, parallel over blocks of weight rows (output features),
/// so each weight row is read once and used for every token while it is in cache. Call
/// inside the pool.
pub fn linear(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    t: usize,
    n: usize,
    k: usize,
    out: &mut [f32],
) {
    if t == 0 || n == 0 {
        return;
    }
    let b = |r: usize| bias.map_or(0.0, |b| b[r]);
    let nb = rows_per_task(n, rayon::current_num_threads(), 4);
    if t == 1 {
        out.par_chunks_mut(nb).enumerate().for_each(|(bi, o)| {
            for (j, y) in o.iter_mut().enumerate() {
                let r = bi * nb + j;
                *y = dot(x, &w[r * k..(r + 1) * k]) + b(r);
            }
        });
        return;
    }
    // Each task fills a [T, rows] block of its own; the blocks are then copied into place.
    let blocks: Vec<Vec<f32>> = (0..n.div_ceil(nb))
        .into_par_iter()
        .map(|bi| {
            let (r0, r1) = (bi * nb, ((bi + 1) * nb).min(n));
            let m = r1 - r0;
            let mut buf = vec![0f32; t * m];
            for r in r0..r1 {
                let (wr, br) = (&w[r * k..(r + 1) * k], b(r));
                for (ti, xr) in x.chunks_exact(k).enumerate() {
                    buf[ti * m + r - r0] = dot(xr, wr) + br;
                }
            }
            buf
        })
        .collect();
    out.par_chunks_mut(n).enumerate().for_each(|(ti, o)| {
        for (bi, buf) in blocks.iter().enumerate() {
            let r0 = bi * nb;
            let m = buf.len() / t;
            o[r0..r0 + m].copy_from_slice(&buf[ti * m..(ti + 1) * m]);
        }
    });
}

impl HostKernel for Linear {
    fn run(&self, op: &Op, inputs: &[&HostTensor], outputs: &mut [&mut HostTensor]) -> Result<()> {
        if !matches!(op, Op::Linear) {
            return Err(wrong_op("linear", op));
        }
        arity(op, inputs, outputs, &[2, 3], 1)?;
        let (t, k) = dims2(inputs[0])?;
        let (n, kw) = dims2(inputs[1])?;
        if k != kw {
            return Err(Error::tensor(
                &inputs[1].name,
                format!(
                    "weight [{n}, {kw}] ([out, in]) does not fit x '{}' [{t}, {k}]",
                    inputs[0].name
                ),
            ));
        }
        let bias = match inputs.get(2) {
            Some(b) => {
                want_shape(b, &[n])?;
                Some(f32s(b)?)
            }
            None => None,
        };
        want_shape(outputs[0], &[t, n])?;
        let (x, w) = (f32s(inputs[0])?, f32s(inputs[1])?);
        let out = f32s_mut(outputs[0])?;
        if k == 0 {
            for row in out.chunks_exact_mut(n.max(1)) {
                match bias {
                    Some(b) => row.copy_from_slice(b),
                    None => row.fill(0.0),
                }
            }
            return Ok(());
        }
        self.pool.install(|| linear(x, w, bias, t, n, k, out));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use gptoss_core::Op;

    #[test]
    fn matmul_with_bias_by_hand() {
        let x = f("x", &[2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let w = f("w", &[2, 3], vec![1.0, 0.0, -1.0, 0.5, 0.5, 0.5]);
        let b = f("b", &[2], vec![10.0, -1.0]);
        let out = run(Op::Linear, &[&x, &w, &b], vec![out_f32("y", &[2, 2])]).unwrap();
        // [1-3+10, 3-1], [4-6+10, 7.5-1]
        assert_eq!(out[0].f32().unwrap(), &[8.0, 2.0, 8.0, 6.5]);
        let out = run(Op::Linear, &[&x, &w], vec![out_f32("y", &[2, 2])]).unwrap();
        assert_eq!(out[0].f32().unwrap(), &[-2.0, 3.0, -2.0, 7.5]);
    }

    #[test]
    fn matches_a_naive_loop_for_one_and_many_tokens() {
        let (n, k) = (37, 19);
        let w = f("w", &[n, k], noise(n * k, 1));
        let b = f("b", &[n], noise(n, 2));
        for t in [1usize, 3] {
            let xs = noise(t * k, 3);
            let x = f("x", &[t, k], xs.clone());
            let out = run(Op::Linear, &[&x, &w, &b], vec![out_f32("y", &[t, n])]).unwrap();
            let (wd, bd) = (w.f32().unwrap(), b.f32().unwrap());
            let want: Vec<f64> = (0..t * n)
                .map(|i| {
                    let (ti, r) = (i / n, i % n);
                    (0..k)
                        .map(|j| xs[ti * k + j] as f64 * wd[r * k + j] as f64)
                        .sum::<f64>()
                        + bd[r] as f64
                })
                .collect();
            assert_close(out[0].f32().unwrap(), &want, 1e-5);
        }
    }

    #[test]
    fn mismatched_inner_dimension_is_an_error() {
        let x = f("x", &[1, 3], vec![1.0; 3]);
        let w = f("w", &[2, 4], vec![1.0; 8]);
        let err = run(Op::Linear, &[&x, &w], vec![out_f32("y", &[1, 2])]).unwrap_err();
        assert!(err.to_string().contains("does not fit"), "{err}");
    }
}
