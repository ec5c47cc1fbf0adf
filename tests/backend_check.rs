//! Checks any backend op by op against the cpu reference: random inputs, outputs poisoned
//! before the run, max-abs and NMSE bounds. Shared by the GPU backends' tests.

use gptoss_core::graph::{Op, ValueKind};
use gptoss_core::rope::{RopeParams, Yarn};
use gptoss_core::{bf16, Backend, DType, Graph, TensorDesc};

pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Roughly normal, mean 0, sd ~1.
    pub fn normal(&mut self) -> f32 {
        (self.uniform() + self.uniform() + self.uniform() + self.uniform() - 2.0) * 1.7
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal() * scale).collect()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
pub fn i32_bytes(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
pub fn to_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}
pub fn to_i32(b: &[u8]) -> Vec<i32> {
    b.chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// A float tensor in `dtype` (values rounded to it) plus its bytes.
pub fn float_tensor(dtype: DType, shape: &[usize], v: &[f32]) -> (TensorDesc, Vec<u8>) {
    let bytes = match dtype {
        DType::F32 => f32_bytes(v),
        DType::BF16 => bf16::f32_to_bytes(v),
        DType::F16 => v
            .iter()
            .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
            .collect(),
        d => panic!("{d} is not a float dtype"),
    };
    (TensorDesc::new(dtype, shape.to_vec()), bytes)
}

pub fn f32_t(shape: &[usize], v: &[f32]) -> (TensorDesc, Vec<u8>) {
    float_tensor(DType::F32, shape, v)
}
pub fn i32_t(shape: &[usize], v: &[i32]) -> (TensorDesc, Vec<u8>) {
    (TensorDesc::new(DType::I32, shape.to_vec()), i32_bytes(v))
}

/// Run one op on `be`: inputs bound as Input, outputs as Output (poisoned with 0xFF bytes first
/// so unwritten elements show) or as State with the given contents. Returns the outputs' bytes.
pub fn run_op(
    be: &mut dyn Backend,
    op: &Op,
    ins: &[(TensorDesc, Vec<u8>)],
    outs: &[(TensorDesc, Option<Vec<u8>>)],
) -> gptoss_core::Result<Vec<Vec<u8>>> {
    let mut g = Graph::new();
    let mut bufs = Vec::new();
    let mut in_ids = Vec::new();
    for (i, (d, data)) in ins.iter().enumerate() {
        let b = be.alloc(d)?;
        be.upload(b, data)?;
        bufs.push(b);
        in_ids.push(g.add_value(format!("in{i}"), d.clone(), ValueKind::Input(b)));
    }
    let mut out_bufs = Vec::new();
    let mut out_ids = Vec::new();
    for (i, (d, init)) in outs.iter().enumerate() {
        let b = be.alloc(d)?;
        let kind = match init {
            Some(data) => {
                be.upload(b, data)?;
                ValueKind::State(b)
            }
            None => {
                be.upload(b, &vec![0xFF; d.byte_size()])?;
                ValueKind::Output(b)
            }
        };
        out_bufs.push(b);
        out_ids.push(g.add_value(format!("out{i}"), d.clone(), kind));
    }
    g.push(op.clone(), in_ids, out_ids);
    let r = be.execute(&g);
    let mut got = Vec::new();
    if r.is_ok() {
        for b in &out_bufs {
            got.push(be.download(*b)?);
        }
    }
    for b in bufs.into_iter().chain(out_bufs) {
        be.free(b)?;
    }
    r.map(|_| got)
}

/// Both backends on the same op; returns (gpu, cpu) outputs.
pub fn both(
    gpu: &mut dyn Backend,
    op: &Op,
    ins: &[(TensorDesc, Vec<u8>)],
    outs: &[(TensorDesc, Option<Vec<u8>>)],
) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let g = run_op(gpu, op, ins, outs).unwrap_or_else(|e| panic!("gpu {}: {e}", op.name()));
    let mut cpu = gptoss_backend_cpu::cpu_backend(2);
    let c = run_op(&mut cpu, op, ins, outs).unwrap_or_else(|e| panic!("cpu {}: {e}", op.name()));
    (g, c)
}

/// Max abs difference (relative to the largest reference magnitude) and NMSE; panics when
/// over `tol` or when the GPU produced a non-finite value where the CPU did not.
pub fn assert_close(what: &str, gpu: &[f32], cpu: &[f32], tol: f32) {
    assert_close_within(what, gpu, cpu, tol, 1e-9);
}

/// [`assert_close`] with an explicit NMSE bound (looser for paths with bf16 operands).
pub fn assert_close_within(what: &str, gpu: &[f32], cpu: &[f32], tol: f32, nmse_max: f64) {
    assert_eq!(gpu.len(), cpu.len(), "{what}: lengths");
    let scale = cpu.iter().fold(1f32, |m, v| m.max(v.abs()));
    let (mut max_abs, mut err2, mut ref2) = (0f32, 0f64, 0f64);
    for (i, (g, c)) in gpu.iter().zip(cpu).enumerate() {
        assert!(
            g.is_finite() || !c.is_finite(),
            "{what}: element {i} is {g} on the GPU, {c} on the CPU"
        );
        max_abs = max_abs.max((g - c).abs());
        err2 += ((g - c) as f64).powi(2);
        ref2 += (*c as f64).powi(2);
    }
    let nmse = err2 / ref2.max(1e-30);
    eprintln!("{what}: max abs {max_abs:.3e} (scale {scale:.2e}), nmse {nmse:.3e}");
    assert!(
        max_abs <= tol * scale,
        "{what}: max abs diff {max_abs} > {tol} x {scale}"
    );
    assert!(nmse <= nmse_max, "{what}: nmse {nmse} > {nmse_max}");
}

pub fn gpt_oss_rope() -> RopeParams {
    RopeParams {
        head_dim: 64,
        theta: 150000.0,
        yarn: Some(Yarn {
            factor: 32.0,
            beta_fast: 32.0,
            beta_slow: 1.0,
            original_max_position_embeddings: 4096,
            truncate: false,
            attention_factor: None,
        }),
    }
}
