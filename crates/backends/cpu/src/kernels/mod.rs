//! One kernel per graph op, and [`CpuKernels`], which hands the executor the right one.
//!
//! Kernels re-check what they rely on (arity, shapes, data lengths, ids, positions) and
//! return an error instead of panicking, so they are safe to call on unvalidated input.
//! Every output is overwritten completely: bound Output buffers arrive with old contents.

pub mod add;
pub mod argmax;
pub mod attention;
pub mod embed;
pub mod gather_rows;
pub mod last_row;
pub mod linear;
pub mod local_experts;
pub mod moe;
pub mod paged_attention;
pub mod rms_norm;
pub mod rope;
pub mod topk_softmax;

use gptoss_core::host::{HostKernel, HostKernels, HostTensor};
use gptoss_core::{DeviceReport, Error, Op, ProbeReport, Result};

use crate::pool::{available_cores, Pool};

/// The CPU backend's kernels, sharing one thread pool.
pub struct CpuKernels {
    pool: Pool,
    embed: embed::Embed,
    rms_norm: rms_norm::RmsNorm,
    linear: linear::Linear,
    rope: rope::Rope,
    attention: attention::Attention,
    topk_softmax: topk_softmax::TopKSoftmax,
    moe: moe::MoeMxfp4,
    local_experts: local_experts::LocalExperts,
    paged_attention: paged_attention::PagedAttention,
    gather_rows: gather_rows::GatherRows,
    add: add::Add,
    last_row: last_row::LastRow,
    argmax: argmax::Argmax,
}

impl CpuKernels {
    /// Kernels running on a new pool of `threads` workers (0 = one per available core).
    pub fn new(threads: usize) -> Self {
        let pool = Pool::new(threads);
        CpuKernels {
            embed: embed::Embed,
            rms_norm: rms_norm::RmsNorm::new(pool.clone()),
            linear: linear::Linear::new(pool.clone()),
            rope: rope::Rope::new(pool.clone()),
            attention: attention::Attention::new(pool.clone()),
            topk_softmax: topk_softmax::TopKSoftmax,
            moe: moe::MoeMxfp4::new(pool.clone()),
            local_experts: local_experts::LocalExperts,
            paged_attention: paged_attention::PagedAttention::new(pool.clone()),
            gather_rows: gather_rows::GatherRows,
            add: add::Add,
            last_row: last_row::LastRow,
            argmax: argmax::Argmax,
            pool,
        }
    }

    /// Worker threads of the pool.
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }
}

impl HostKernels for CpuKernels {
    fn kernel(&self, op: &Op) -> Option<&dyn HostKernel> {
        Some(match op {
            Op::Embed => &self.embed,
            Op::RmsNorm { .. } => &self.rms_norm,
            Op::Linear => &self.linear,
            Op::Rope { .. } => &self.rope,
            Op::Attention { .. } => &self.attention,
            Op::TopKSoftmax { .. } => &self.topk_softmax,
            Op::MoeMxfp4 { .. } => &self.moe,
            Op::LocalExperts { .. } => &self.local_experts,
            Op::PagedAttention { .. } => &self.paged_attention,
            Op::GatherRows => &self.gather_rows,
            // Collectives belong to the executor (it knows the shard group).
            Op::AllReduceSum => return None,
            Op::Add => &self.add,
            Op::LastRow => &self.last_row,
            Op::Argmax => &self.argmax,
        })
    }

    fn probe(&self) -> ProbeReport {
        ProbeReport {
            devices: vec![DeviceReport {
                name: format!(
                    "cpu ({} cores, {} threads)",
                    available_cores(),
                    self.threads()
                ),
                compute_capability: None,
                memory_bytes: None,
                driver: None,
                score: 1,
                reason: "always available; exact f32 reference".into(),
            }],
        }
    }
}

// ---- argument checking shared by the kernels ----

/// Check the number of inputs (one of `ins`) and outputs.
pub(crate) fn arity(
    op: &Op,
    inputs: &[&HostTensor],
    outputs: &[&mut HostTensor],
    ins: &[usize],
    outs: usize,
) -> Result<()> {
    if !ins.contains(&inputs.len()) || outputs.len() != outs {
        return Err(Error::Graph(format!(
            "{} takes {ins:?} inputs and {outs} outputs, got {} and {}",
            op.name(),
            inputs.len(),
            outputs.len()
        )));
    }
    Ok(())
}

/// The error for a kernel handed an op it does not implement.
pub(crate) fn wrong_op(kernel: &str, op: &Op) -> Error {
    Error::Graph(format!(
        "the {kernel} kernel was given a '{}' op",
        op.name()
    ))
}

/// Dims of a 2-D tensor.
pub(crate) fn dims2(t: &HostTensor) -> Result<(usize, usize)> {
    match t.desc.shape.dims() {
        [a, b] => Ok((*a, *b)),
        d => Err(Error::tensor(
            &t.name,
            format!("expected a 2-D tensor, got shape {d:?}"),
        )),
    }
}

/// Require an exact shape.
pub(crate) fn want_shape(t: &HostTensor, dims: &[usize]) -> Result<()> {
    if t.desc.shape.dims() != dims {
        return Err(Error::tensor(
            &t.name,
            format!("expected shape {dims:?}, got {:?}", t.desc.shape.dims()),
        ));
    }
    Ok(())
}

fn want_len(t: &HostTensor, len: usize) -> Result<()> {
    if len != t.desc.numel() {
        return Err(Error::tensor(
            &t.name,
            format!(
                "holds {len} elements, its shape {} needs {}",
                t.desc.shape,
                t.desc.numel()
            ),
        ));
    }
    Ok(())
}

/// Float data, checked against the shape.
pub(crate) fn f32s(t: &HostTensor) -> Result<&[f32]> {
    let d = t.f32()?;
    want_len(t, d.len())?;
    Ok(d)
}

/// I32 data, checked against the shape.
pub(crate) fn i32s(t: &HostTensor) -> Result<&[i32]> {
    let d = t.i32()?;
    want_len(t, d.len())?;
    Ok(d)
}

/// Byte data, checked against the shape.
pub(crate) fn bytes(t: &HostTensor) -> Result<&[u8]> {
    let d = t.bytes()?;
    want_len(t, d.len())?;
    Ok(d)
}

/// Mutable float data, checked against the shape.
pub(crate) fn f32s_mut(t: &mut HostTensor) -> Result<&mut [f32]> {
    let n = t.desc.numel();
    let name = t.name.clone();
    let d = t.f32_mut()?;
    if d.len() != n {
        return Err(Error::tensor(
            name,
            format!("holds {} elements, its shape needs {n}", d.len()),
        ));
    }
    Ok(d)
}

/// Mutable I32 data, checked against the shape.
pub(crate) fn i32s_mut(t: &mut HostTensor) -> Result<&mut [i32]> {
    let n = t.desc.numel();
    let name = t.name.clone();
    let d = t.i32_mut()?;
    if d.len() != n {
        return Err(Error::tensor(
            name,
            format!("holds {} elements, its shape needs {n}", d.len()),
        ));
    }
    Ok(d)
}

/// Rows per parallel task so that each worker gets several tasks (load balance) but each
/// task is large enough to amortise scheduling.
pub(crate) fn rows_per_task(rows: usize, threads: usize, min_rows: usize) -> usize {
    rows.div_ceil(threads.max(1) * 8).max(min_rows).max(1)
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;
    use gptoss_core::TensorDesc;

    /// Run `op` through the dispatcher on fresh kernels; returns the outputs.
    pub fn run(
        op: Op,
        inputs: &[&HostTensor],
        outputs: Vec<HostTensor>,
    ) -> Result<Vec<HostTensor>> {
        let kernels = CpuKernels::new(2);
        let k = kernels.kernel(&op).expect("every op has a kernel");
        let mut outs = outputs;
        let mut refs: Vec<&mut HostTensor> = outs.iter_mut().collect();
        k.run(&op, inputs, &mut refs)?;
        Ok(outs)
    }

    pub fn f(name: &str, shape: &[usize], v: Vec<f32>) -> HostTensor {
        HostTensor::from_f32(name, shape, v)
    }

    pub fn i(name: &str, shape: &[usize], v: Vec<i32>) -> HostTensor {
        HostTensor::from_i32(name, shape, v)
    }

    /// A float output filled with NaN, so a kernel that skips an element is caught.
    pub fn out_f32(name: &str, shape: &[usize]) -> HostTensor {
        let n: usize = shape.iter().product();
        HostTensor::from_f32(name, shape, vec![f32::NAN; n])
    }

    /// An I32 output filled with a sentinel.
    pub fn out_i32(name: &str, shape: &[usize]) -> HostTensor {
        let n: usize = shape.iter().product();
        HostTensor::from_i32(name, shape, vec![-77; n])
    }

    pub fn zeros(name: &str, dtype: gptoss_core::DType, shape: &[usize]) -> HostTensor {
        HostTensor::zeros(name, TensorDesc::new(dtype, shape))
    }

    /// Deterministic pseudo-random floats in [-1, 1).
    pub fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    pub fn assert_close(got: &[f32], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len(), "length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let err = (*g as f64 - w).abs();
            assert!(
                err <= tol * w.abs().max(1.0),
                "[{i}]: got {g}, want {w} (err {err:e})"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_has_a_kernel_and_the_probe_scores_one() {
        let k = CpuKernels::new(2);
        assert_eq!(k.threads(), 2);
        let p = k.probe();
        assert_eq!(p.devices.len(), 1);
        assert!(
            p.devices[0].name.starts_with("cpu ("),
            "{}",
            p.devices[0].name
        );
        assert_eq!(p.devices[0].score, 1);
        assert_eq!(p.devices[0].reason, "always available; exact f32 reference");
        let rope = gptoss_core::rope::RopeParams {
            head_dim: 2,
            theta: 10.0,
            yarn: None,
        };
        for op in [
            Op::Embed,
            Op::RmsNorm { eps: 1e-5 },
            Op::Linear,
            Op::Rope {
                params: rope,
                heads: 1,
            },
            Op::Attention {
                heads: 1,
                kv_heads: 1,
                head_dim: 1,
                window: 0,
                scale: 1.0,
            },
            Op::TopKSoftmax { k: 1 },
            Op::MoeMxfp4 {
                swiglu_limit: 7.0,
                alpha: 1.702,
            },
            Op::Add,
            Op::LastRow,
            Op::Argmax,
            Op::LocalExperts { first: 0, count: 1 },
            Op::GatherRows,
            Op::PagedAttention {
                heads: 1,
                kv_heads: 1,
                head_dim: 2,
                window: 0,
                scale: 1.0,
                page_size: 16,
            },
        ] {
            assert!(k.kernel(&op).is_some(), "{}", op.name());
        }
        assert!(k.kernel(&Op::AllReduceSum).is_none(), "the executor sums");
    }

    #[test]
    fn zero_threads_means_all_cores() {
        assert_eq!(CpuKernels::new(0).threads(), available_cores());
    }

    #[test]
    fn a_kernel_rejects_the_wrong_arity_and_op() {
        let x = testutil::f("x", &[1, 2], vec![1.0, 2.0]);
        let err = testutil::run(Op::Add, &[&x], vec![testutil::out_f32("y", &[1, 2])]).unwrap_err();
        assert!(err.to_string().contains("add takes"), "{err}");
        let k = CpuKernels::new(1);
        let mut y = testutil::out_f32("y", &[1, 2]);
        let err = k
            .kernel(&Op::Add)
            .unwrap()
            .run(&Op::LastRow, &[&x, &x], &mut [&mut y])
            .unwrap_err();
        assert!(err.to_string().contains("last_row"), "{err}");
    }
}
