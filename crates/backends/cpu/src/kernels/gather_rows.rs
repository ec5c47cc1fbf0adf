//! GatherRows: chosen rows of a [T, N] tensor (each sequence's last row in a batched step).

use gptoss_core::host::{HostKernel, HostTensor};
use gptoss_core::{Error, Op, Result};

use super::{arity, dims2, f32s, f32s_mut, i32s, want_shape, wrong_op};

/// in: x [T, N], rows [B] I32 -> out [B, N].
pub struct GatherRows;

impl HostKernel for GatherRows {
    fn run(&self, op: &Op, inputs: &[&HostTensor], outputs: &mut [&mut HostTensor]) -> Result<()> {
        if !matches!(op, Op::GatherRows) {
            return Err(wrong_op("gather_rows", op));
        }
        arity(op, inputs, outputs, &[2], 1)?;
        let (t, n) = dims2(inputs[0])?;
        let rows = i32s(inputs[1])?;
        want_shape(outputs[0], &[rows.len(), n])?;
        let x = f32s(inputs[0])?;
        let out = f32s_mut(outputs[0])?;
        for (b, &r) in rows.iter().enumerate() {
            if r < 0 || r as usize >= t {
                return Err(Error::Input(format!(
                    "gather_rows: row {r} of a tensor with {t} rows"
                )));
            }
            out[b * n..(b + 1) * n].copy_from_slice(&x[r as usize * n..(r as usize + 1) * n]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use gptoss_core::Op;

    #[test]
    fn picks_rows_in_order_and_checks_them() {
        let x = f("x", &[3, 2], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let r = i("r", &[2], vec![2, 0]);
        let out = run(Op::GatherRows, &[&x, &r], vec![out_f32("y", &[2, 2])]).unwrap();
        assert_eq!(out[0].f32().unwrap(), &[5.0, 6.0, 1.0, 2.0]);
        let bad = i("r", &[1], vec![3]);
        assert!(run(Op::GatherRows, &[&x, &bad], vec![out_f32("y", &[1, 2])]).is_err());
    }
}
