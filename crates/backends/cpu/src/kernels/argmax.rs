//! Argmax: index of each row's maximum, the first one on ties.

use gptoss_core::host::{HostKernel, HostTensor};
use gptoss_core::{Error, Op, Result};

use super::{arity, dims2, f32s, i32s_mut, want_shape, wrong_op};

/// in: x [T, N] -> out [T] I32. NaN counts as the largest value (as in torch.argmax).
pub struct Argmax;

/// Index of the maximum of `row`: the first maximum on ties, the first NaN if there is one.
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v.is_nan() {
            return i;
        }
        if v > row[best] {
            best = i;
        }
    }
    best
}

impl HostKernel for Argmax {
    fn run(&self, op: &Op, inputs: &[&HostTensor], outputs: &mut [&mut HostTensor]) -> Result<()> {
        if !matches!(op, Op::Argmax) {
            return Err(wrong_op("argmax", op));
        }
        arity(op, inputs, outputs, &[1], 1)?;
        let (t, n) = dims2(inputs[0])?;
        want_shape(outputs[0], &[t])?;
        if n == 0 && t > 0 {
            return Err(Error::tensor(
                &inputs[0].name,
                "argmax over rows of length 0",
            ));
        }
        if n > i32::MAX as usize {
            return Err(Error::tensor(
                &inputs[0].name,
                format!("rows of {n} values do not fit I32 indices"),
            ));
        }
        let x = f32s(inputs[0])?;
        let out = i32s_mut(outputs[0])?;
        for (o, row) in out.iter_mut().zip(x.chunks_exact(n.max(1))) {
            *o = argmax(row) as i32;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use gptoss_core::Op;

    #[test]
    fn first_index_wins_ties() {
        let x = f(
            "x",
            &[3, 4],
            vec![
                1.0, 5.0, 5.0, 2.0, -1.0, -1.0, -1.0, -1.0, 0.0, -3.0, 0.5, 0.49,
            ],
        );
        let out = run(Op::Argmax, &[&x], vec![out_i32("ids", &[3])]).unwrap();
        assert_eq!(out[0].i32().unwrap(), &[1, 0, 2]);
    }

    #[test]
    fn nan_is_the_maximum() {
        assert_eq!(super::argmax(&[1.0, f32::NAN, 3.0, f32::NAN]), 1);
        assert_eq!(super::argmax(&[f32::NEG_INFINITY, f32::NEG_INFINITY]), 0);
    }
}
