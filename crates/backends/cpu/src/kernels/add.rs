//! Add: elementwise sum of two same-shaped tensors.

use gptoss_core::host::{HostData, HostKernel, HostTensor};
use gptoss_core::{Error, Op, Result};

use super::{arity, f32s, f32s_mut, i32s, i32s_mut, want_shape, wrong_op};

/// in: a, b (same shape) -> out: a + b. Float tensors add in f32, I32 tensors wrap.
pub struct Add;

impl HostKernel for Add {
    fn run(&self, op: &Op, inputs: &[&HostTensor], outputs: &mut [&mut HostTensor]) -> Result<()> {
        if !matches!(op, Op::Add) {
            return Err(wrong_op("add", op));
        }
        arity(op, inputs, outputs, &[2], 1)?;
        let (a, b) = (inputs[0], inputs[1]);
        let dims = a.desc.shape.dims().to_vec();
        want_shape(b, &dims)?;
        want_shape(outputs[0], &dims)?;
        match (&a.data, &b.data) {
            (HostData::F32(_), HostData::F32(_)) => {
                let (a, b) = (f32s(a)?, f32s(b)?);
                for ((o, x), y) in f32s_mut(outputs[0])?.iter_mut().zip(a).zip(b) {
                    *o = x + y;
                }
            }
            (HostData::I32(_), HostData::I32(_)) => {
                let (a, b) = (i32s(a)?, i32s(b)?);
                for ((o, x), y) in i32s_mut(outputs[0])?.iter_mut().zip(a).zip(b) {
                    *o = x.wrapping_add(*y);
                }
            }
            _ => {
                return Err(Error::tensor(
                    &a.name,
                    format!(
                        "add of {} and {} ('{}') is not supported",
                        a.desc, b.desc, b.name
                    ),
                ))
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use gptoss_core::Op;

    #[test]
    fn adds_elementwise() {
        let a = f("a", &[2, 2], vec![1.0, 2.0, 3.0, 4.0]);
        let b = f("b", &[2, 2], vec![0.5, -2.0, 10.0, 0.25]);
        let out = run(Op::Add, &[&a, &b], vec![out_f32("y", &[2, 2])]).unwrap();
        assert_eq!(out[0].f32().unwrap(), &[1.5, 0.0, 13.0, 4.25]);
    }

    #[test]
    fn shape_mismatch_is_an_error() {
        let a = f("a", &[2, 2], vec![1.0; 4]);
        let b = f("b", &[4, 1], vec![1.0; 4]);
        let err = run(Op::Add, &[&a, &b], vec![out_f32("y", &[2, 2])]).unwrap_err();
        assert!(err.to_string().contains("'b'"), "{err}");
    }
}
