//! LastRow: the last row of a [T, N] tensor (decode needs only the last position's logits).

use gptoss_core::host::{HostKernel, HostTensor};
use gptoss_core::{Error, Op, Result};

use super::{arity, dims2, f32s, f32s_mut, want_shape, wrong_op};

/// in: x [T, N] -> out [1, N].
pub struct LastRow;

impl HostKernel for LastRow {
    fn run(&self, op: &Op, inputs: &[&HostTensor], outputs: &mut [&mut HostTensor]) -> Result<()> {
        if !matches!(op, Op::LastRow) {
            return Err(wrong_op("last_row", op));
        }
        arity(op, inputs, outputs, &[1], 1)?;
        let (t, n) = dims2(inputs[0])?;
        if t == 0 {
            return Err(Error::tensor(
                &inputs[0].name,
                "last_row of an empty tensor (0 rows)",
            ));
        }
        want_shape(outputs[0], &[1, n])?;
        let x = f32s(inputs[0])?;
        f32s_mut(outputs[0])?.copy_from_slice(&x[(t - 1) * n..]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use gptoss_core::Op;

    #[test]
    fn takes_the_last_row() {
        let x = f("x", &[3, 2], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let out = run(Op::LastRow, &[&x], vec![out_f32("y", &[1, 2])]).unwrap();
        assert_eq!(out[0].f32().unwrap(), &[5.0, 6.0]);
        let empty = f("x", &[0, 2], vec![]);
        assert!(run(Op::LastRow, &[&empty], vec![out_f32("y", &[1, 2])]).is_err());
    }
}
