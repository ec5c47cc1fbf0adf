//! TopKSoftmax: the router's top-k experts per token and softmax weights over those k.

use gptoss_core::host::{HostKernel, HostTensor};
use gptoss_core::{Error, Op, Result};

use super::{arity, dims2, f32s, f32s_mut, i32s_mut, want_shape, wrong_op};

/// in: logits [T, E] -> out: ids [T, k] I32, weights [T, k] F32.
pub struct TopKSoftmax;

/// Whether `a` ranks above `b`: larger value; NaN above everything; -0.0 equals 0.0.
fn above(a: f32, b: f32) -> bool {
    if a.is_nan() {
        return !b.is_nan();
    }
    a > b
}

/// Indices of the `k` largest values of `row`, largest first, ties to the lower index.
pub fn top_k(row: &[f32], k: usize, ids: &mut [i32]) {
    let mut taken = vec![false; row.len()];
    for slot in ids.iter_mut().take(k) {
        let mut best: Option<usize> = None;
        for (i, &v) in row.iter().enumerate() {
            let better = match best {
                None => true,
                Some(b) => above(v, row[b]),
            };
            if !taken[i] && better {
                best = Some(i);
            }
        }
        let Some(b) = best else { break };
        taken[b] = true;
        *slot = b as i32;
    }
}

/// Softmax of `vals` (the selected logits) in f32 into `out`.
pub fn softmax(vals: &[f32], out: &mut [f32]) {
    let m = vals.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0.0;
    for (o, v) in out.iter_mut().zip(vals) {
        *o = (v - m).exp();
        sum += *o;
    }
    let inv = 1.0 / sum;
    for o in out.iter_mut() {
        *o *= inv;
    }
}

impl HostKernel for TopKSoftmax {
    fn run(&self, op: &Op, inputs: &[&HostTensor], outputs: &mut [&mut HostTensor]) -> Result<()> {
        let Op::TopKSoftmax { k } = *op else {
            return Err(wrong_op("topk_softmax", op));
        };
        arity(op, inputs, outputs, &[1], 2)?;
        let k = k as usize;
        let (t, e) = dims2(inputs[0])?;
        if k == 0 || k > e || e > i32::MAX as usize {
            return Err(Error::tensor(
                &inputs[0].name,
                format!("top-{k} of {e} values: k must be in 1..={e}"),
            ));
        }
        want_shape(outputs[0], &[t, k])?;
        want_shape(outputs[1], &[t, k])?;
        let x = f32s(inputs[0])?;
        let [ids, weights] = outputs else {
            return Err(wrong_op("topk_softmax", op));
        };
        let (ids, weights) = (i32s_mut(ids)?, f32s_mut(weights)?);
        let mut vals = vec![0f32; k];
        for ((row, id), w) in x
            .chunks_exact(e)
            .zip(ids.chunks_exact_mut(k))
            .zip(weights.chunks_exact_mut(k))
        {
            top_k(row, k, id);
            for (v, &i) in vals.iter_mut().zip(id.iter()) {
                *v = row[i as usize];
            }
            softmax(&vals, w);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use gptoss_core::Op;

    #[test]
    fn ties_go_to_the_lower_index_and_weights_sum_to_one() {
        let x = f(
            "logits",
            &[2, 5],
            vec![1.0, 3.0, 3.0, 2.0, 3.0, 5.0, 1.0, 5.0, 7.0, -0.0],
        );
        let out = run(
            Op::TopKSoftmax { k: 3 },
            &[&x],
            vec![out_i32("ids", &[2, 3]), out_f32("w", &[2, 3])],
        )
        .unwrap();
        assert_eq!(out[0].i32().unwrap(), &[1, 2, 4, 3, 0, 2]);
        let w = out[1].f32().unwrap();
        // Row 0: three equal logits -> 1/3 each. Row 1: softmax(7, 5, 5).
        let z = 1.0 + 2.0 * (-2f64).exp();
        assert_close(
            w,
            &[
                1.0 / 3.0,
                1.0 / 3.0,
                1.0 / 3.0,
                1.0 / z,
                (-2f64).exp() / z,
                (-2f64).exp() / z,
            ],
            1e-6,
        );
        for row in w.chunks(3) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
    }

    #[test]
    fn softmax_is_over_the_selected_values_only() {
        // Top-2 of [0, 1, 0, 0]: ids [1, 0]; weights softmax(1, 0), not softmax over all four.
        let x = f("logits", &[1, 4], vec![0.0, 1.0, 0.0, 0.0]);
        let out = run(
            Op::TopKSoftmax { k: 2 },
            &[&x],
            vec![out_i32("ids", &[1, 2]), out_f32("w", &[1, 2])],
        )
        .unwrap();
        assert_eq!(out[0].i32().unwrap(), &[1, 0]);
        let e = 1f64.exp();
        assert_close(
            out[1].f32().unwrap(),
            &[e / (e + 1.0), 1.0 / (e + 1.0)],
            1e-6,
        );
    }

    #[test]
    fn k_larger_than_the_row_is_an_error() {
        let x = f("logits", &[1, 2], vec![0.0, 1.0]);
        let r = run(
            Op::TopKSoftmax { k: 3 },
            &[&x],
            vec![out_i32("ids", &[1, 3]), out_f32("w", &[1, 3])],
        );
        assert!(r.is_err());
    }
}
