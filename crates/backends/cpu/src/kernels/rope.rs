//! Rope: rotate each head of each token by its position, half-split pairing (i with i + d/2).

use gptoss_core::host::{HostKernel, HostTensor};
use gptoss_core::rope::rotate_half_split;
use gptoss_core::{Error, Op, Result};
use rayon::prelude::*;

use super::{arity, dims2, f32s, f32s_mut, i32s, want_shape, wrong_op};
use crate::Pool;

/// in: x [T, heads * head_dim], positions [T] I32 -> out, same shape.
pub struct Rope {
    pool: Pool,
}

impl Rope {
    pub fn new(pool: Pool) -> Self {
        Rope { pool }
    }
}

impl HostKernel for Rope {
    fn run(&self, op: &Op, inputs: &[&HostTensor], outputs: &mut [&mut HostTensor]) -> Result<()> {
        let Op::Rope { params, heads } = op else {
            return Err(wrong_op("rope", op));
        };
        arity(op, inputs, outputs, &[2], 1)?;
        let (t, width) = dims2(inputs[0])?;
        let d = params.head_dim as usize;
        if d & 1 == 1 || width != *heads as usize * d {
            return Err(Error::tensor(
                &inputs[0].name,
                format!(
                    "width {width} is not heads {heads} x head_dim {d} (head_dim must be even)"
                ),
            ));
        }
        want_shape(inputs[1], &[t])?;
        want_shape(outputs[0], &[t, width])?;
        let (x, pos) = (f32s(inputs[0])?, i32s(inputs[1])?);
        if let Some(p) = pos.iter().find(|p| **p < 0) {
            return Err(Error::Input(format!("rope: negative position {p}")));
        }
        let out = f32s_mut(outputs[0])?;
        out.copy_from_slice(x);
        if width == 0 {
            return Ok(());
        }
        let inv_freq = params.inv_freq();
        self.pool.install(|| {
            out.par_chunks_mut(width)
                .zip(pos.par_iter())
                .for_each(|(row, &p)| {
                    let (cos, sin) = params.cos_sin(&inv_freq, p as u32);
                    for head in row.chunks_exact_mut(d) {
                        rotate_half_split(head, &cos, &sin);
                    }
                })
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use gptoss_core::rope::{RopeParams, Yarn};
    use gptoss_core::Op;

    #[test]
    fn rotates_each_head_by_its_token_position() {
        // head_dim 4, theta 10000: inv_freq = [1, 10000^-0.5 = 0.01]. Pairs (0,2) and (1,3).
        let params = RopeParams {
            head_dim: 4,
            theta: 10000.0,
            yarn: None,
        };
        let op = Op::Rope { params, heads: 2 };
        // token 0 at position 3, token 1 at position 0 (unchanged); two heads each.
        let x = f(
            "x",
            &[2, 8],
            vec![
                1.0, 2.0, 3.0, 4.0, -1.0, 0.0, 0.5, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0,
            ],
        );
        let pos = i("pos", &[2], vec![3, 0]);
        let out = run(op, &[&x, &pos], vec![out_f32("y", &[2, 8])]).unwrap();
        let (c0, s0) = (3f64.cos(), 3f64.sin());
        let (c1, s1) = (0.03f64.cos(), 0.03f64.sin());
        let rot = |h: [f64; 4]| {
            [
                h[0] * c0 - h[2] * s0,
                h[1] * c1 - h[3] * s1,
                h[2] * c0 + h[0] * s0,
                h[3] * c1 + h[1] * s1,
            ]
        };
        let mut want: Vec<f64> = Vec::new();
        want.extend(rot([1.0, 2.0, 3.0, 4.0]));
        want.extend(rot([-1.0, 0.0, 0.5, 0.0]));
        want.extend([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
        assert_close(out[0].f32().unwrap(), &want, 1e-6);
    }

    #[test]
    fn yarn_attention_factor_scales_cos_and_sin() {
        let yarn = Yarn {
            factor: 1.0,
            beta_fast: 32.0,
            beta_slow: 1.0,
            original_max_position_embeddings: 4096,
            truncate: false,
            attention_factor: Some(2.0),
        };
        let params = RopeParams {
            head_dim: 2,
            theta: 10000.0,
            yarn: Some(yarn),
        };
        let x = f("x", &[1, 2], vec![1.0, 0.0]);
        let pos = i("pos", &[1], vec![0]);
        let out = run(
            Op::Rope { params, heads: 1 },
            &[&x, &pos],
            vec![out_f32("y", &[1, 2])],
        )
        .unwrap();
        assert_eq!(out[0].f32().unwrap(), &[2.0, 0.0]);
    }

    #[test]
    fn negative_position_is_an_error() {
        let params = RopeParams {
            head_dim: 2,
            theta: 10000.0,
            yarn: None,
        };
        let x = f("x", &[1, 2], vec![1.0, 0.0]);
        let pos = i("pos", &[1], vec![-1]);
        assert!(run(
            Op::Rope { params, heads: 1 },
            &[&x, &pos],
            vec![out_f32("y", &[1, 2])]
        )
        .is_err());
    }
}
