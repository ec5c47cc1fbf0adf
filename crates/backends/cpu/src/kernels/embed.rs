//! Embed: rows of the table for each token id.

use gptoss_core::host::{HostKernel, HostTensor};
use gptoss_core::{Error, Op, Result};

use super::{arity, dims2, f32s, f32s_mut, i32s, want_shape, wrong_op};

/// in: table [V, H] (float), ids [T] I32 -> out [T, H].
pub struct Embed;

impl HostKernel for Embed {
    fn run(&self, op: &Op, inputs: &[&HostTensor], outputs: &mut [&mut HostTensor]) -> Result<()> {
        if !matches!(op, Op::Embed) {
            return Err(wrong_op("embed", op));
        }
        arity(op, inputs, outputs, &[2], 1)?;
        let (table, ids) = (inputs[0], inputs[1]);
        let (vocab, hidden) = dims2(table)?;
        let t = ids.desc.shape.numel();
        want_shape(ids, &[t])?;
        let (tab, id) = (f32s(table)?, i32s(ids)?);
        want_shape(outputs[0], &[t, hidden])?;
        // Check every id before writing anything.
        if let Some(bad) = id.iter().find(|&&i| i < 0 || i as usize >= vocab) {
            return Err(Error::Input(format!(
                "token id {bad} is out of range for the vocabulary of {vocab} tokens (ids 0..{vocab})"
            )));
        }
        let out = f32s_mut(outputs[0])?;
        if hidden == 0 {
            return Ok(());
        }
        for (row, &i) in out.chunks_exact_mut(hidden).zip(id) {
            let i = i as usize;
            row.copy_from_slice(&tab[i * hidden..(i + 1) * hidden]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use gptoss_core::Op;

    fn table() -> gptoss_core::host::HostTensor {
        f(
            "table",
            &[4, 2],
            vec![0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5],
        )
    }

    #[test]
    fn copies_rows_in_id_order() {
        let ids = i("ids", &[3], vec![3, 0, 3]);
        let out = run(Op::Embed, &[&table(), &ids], vec![out_f32("x", &[3, 2])]).unwrap();
        assert_eq!(out[0].f32().unwrap(), &[3.0, 3.5, 0.0, 0.5, 3.0, 3.5]);
    }

    #[test]
    fn out_of_range_ids_are_errors_naming_id_and_vocab() {
        for bad in [4, -1] {
            let ids = i("ids", &[2], vec![1, bad]);
            let err = run(Op::Embed, &[&table(), &ids], vec![out_f32("x", &[2, 2])]).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("token id {bad}")) && msg.contains("4 tokens"),
                "{msg}"
            );
            assert!(matches!(err, gptoss_core::Error::Input(_)));
        }
    }
}
