//! LocalExperts: global expert ids to this shard's ids (-1 for experts held elsewhere).

use gptoss_core::host::{HostKernel, HostTensor};
use gptoss_core::{Op, Result};

use super::{arity, dims2, i32s, i32s_mut, want_shape, wrong_op};

/// in: ids [T, k] I32 -> out ids [T, k] I32.
pub struct LocalExperts;

impl HostKernel for LocalExperts {
    fn run(&self, op: &Op, inputs: &[&HostTensor], outputs: &mut [&mut HostTensor]) -> Result<()> {
        let Op::LocalExperts { first, count } = *op else {
            return Err(wrong_op("local_experts", op));
        };
        arity(op, inputs, outputs, &[1], 1)?;
        let (t, k) = dims2(inputs[0])?;
        want_shape(outputs[0], &[t, k])?;
        let (first, end) = (first as i64, first as i64 + count as i64);
        let ids = i32s(inputs[0])?;
        for (o, &id) in i32s_mut(outputs[0])?.iter_mut().zip(ids) {
            let id = id as i64;
            *o = if (first..end).contains(&id) {
                (id - first) as i32
            } else {
                -1
            };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use gptoss_core::Op;

    #[test]
    fn keeps_held_experts_and_marks_the_rest() {
        let ids = i("ids", &[2, 3], vec![0, 4, 5, 7, 8, 3]);
        let op = Op::LocalExperts { first: 4, count: 4 };
        let out = run(op, &[&ids], vec![out_i32("o", &[2, 3])]).unwrap();
        assert_eq!(out[0].i32().unwrap(), &[-1, 0, 1, 3, -1, -1]);
    }
}
