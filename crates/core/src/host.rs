//! A default graph executor for backends whose buffers live in host memory.
//!
//! Such a backend supplies only kernels ([`HostKernel`], one per op) through [`HostKernels`];
//! [`HostExecutor`] owns the buffers, walks the graph, allocates and frees temporaries, and
//! implements [`Backend`]. Float tensors are held as f32 (BF16/F16 are widened exactly on
//! upload), byte-packed tensors as bytes, I32 as i32.

use std::collections::HashMap;
use std::sync::Arc;

use crate::collective::{host_group, HostGroup, ShardOptions};

use crate::graph::{Op, ValueKind};
use crate::{bf16, Backend, BufferId, DType, Error, Graph, ProbeReport, Result, TensorDesc};

#[derive(Debug, Clone, PartialEq)]
pub enum HostData {
    F32(Vec<f32>),
    I32(Vec<i32>),
    Bytes(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub name: String,
    pub desc: TensorDesc,
    pub data: HostData,
}

impl HostTensor {
    /// A zero-filled tensor of the host representation of `desc`.
    pub fn zeros(name: impl Into<String>, desc: TensorDesc) -> Self {
        let n = desc.numel();
        let data = match desc.dtype {
            DType::F32 | DType::BF16 | DType::F16 => HostData::F32(vec![0.0; n]),
            DType::I32 => HostData::I32(vec![0; n]),
            DType::U8 | DType::Mxfp4Blocks | DType::E8m0Scales => HostData::Bytes(vec![0; n]),
        };
        HostTensor {
            name: name.into(),
            desc,
            data,
        }
    }

    pub fn from_f32(name: impl Into<String>, shape: impl Into<crate::Shape>, v: Vec<f32>) -> Self {
        HostTensor {
            name: name.into(),
            desc: TensorDesc::new(DType::F32, shape),
            data: HostData::F32(v),
        }
    }

    pub fn from_i32(name: impl Into<String>, shape: impl Into<crate::Shape>, v: Vec<i32>) -> Self {
        HostTensor {
            name: name.into(),
            desc: TensorDesc::new(DType::I32, shape),
            data: HostData::I32(v),
        }
    }

    pub fn from_bytes(name: impl Into<String>, desc: TensorDesc, v: Vec<u8>) -> Self {
        HostTensor {
            name: name.into(),
            desc,
            data: HostData::Bytes(v),
        }
    }

    fn kind_error(&self, want: &str) -> Error {
        Error::tensor(
            &self.name,
            format!("expected {want} data, tensor is {}", self.desc),
        )
    }

    pub fn f32(&self) -> Result<&[f32]> {
        match &self.data {
            HostData::F32(v) => Ok(v),
            _ => Err(self.kind_error("float")),
        }
    }
    pub fn f32_mut(&mut self) -> Result<&mut [f32]> {
        if !matches!(self.data, HostData::F32(_)) {
            return Err(self.kind_error("float"));
        }
        match &mut self.data {
            HostData::F32(v) => Ok(v),
            _ => unreachable!("checked above"),
        }
    }
    pub fn i32(&self) -> Result<&[i32]> {
        match &self.data {
            HostData::I32(v) => Ok(v),
            _ => Err(self.kind_error("I32")),
        }
    }
    pub fn i32_mut(&mut self) -> Result<&mut [i32]> {
        if !matches!(self.data, HostData::I32(_)) {
            return Err(self.kind_error("I32"));
        }
        match &mut self.data {
            HostData::I32(v) => Ok(v),
            _ => unreachable!("checked above"),
        }
    }
    pub fn bytes(&self) -> Result<&[u8]> {
        match &self.data {
            HostData::Bytes(v) => Ok(v),
            _ => Err(self.kind_error("byte")),
        }
    }

    /// Fill from little-endian bytes of `desc.dtype`.
    pub fn fill_from_bytes(&mut self, data: &[u8]) -> Result<()> {
        self.desc.check_upload(&self.name, data.len())?;
        self.data = match self.desc.dtype {
            DType::F32 => HostData::F32(
                data.chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            ),
            DType::BF16 => HostData::F32(bf16::bytes_to_f32(data)),
            DType::F16 => HostData::F32(
                data.chunks_exact(2)
                    .map(|b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
                    .collect(),
            ),
            DType::I32 => HostData::I32(
                data.chunks_exact(4)
                    .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            ),
            DType::U8 | DType::Mxfp4Blocks | DType::E8m0Scales => HostData::Bytes(data.to_vec()),
        };
        Ok(())
    }

    /// Little-endian bytes of `desc.dtype` (floats narrowed with round-to-nearest-even).
    pub fn to_bytes(&self) -> Vec<u8> {
        match (&self.data, self.desc.dtype) {
            (HostData::F32(v), DType::BF16) => bf16::f32_to_bytes(v),
            (HostData::F32(v), DType::F16) => v
                .iter()
                .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                .collect(),
            (HostData::F32(v), _) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            (HostData::I32(v), _) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            (HostData::Bytes(v), _) => v.clone(),
        }
    }
}

/// One op on host tensors. `outputs` arrive zeroed for temporaries and with their previous
/// contents for State values (updated in place).
pub trait HostKernel: Send + Sync {
    fn run(&self, op: &Op, inputs: &[&HostTensor], outputs: &mut [&mut HostTensor]) -> Result<()>;
}

/// A backend's set of kernels; `None` means the op is not implemented.
pub trait HostKernels: Send + Sync {
    fn kernel(&self, op: &Op) -> Option<&dyn HostKernel>;
    fn probe(&self) -> ProbeReport;
}

pub struct HostExecutor<K: HostKernels> {
    name: String,
    kernels: K,
    buffers: HashMap<BufferId, HostTensor>,
    next_id: u64,
    all_reduce: AllReduce,
}

/// `Op::AllReduceSum` for every host backend: through the shard group when there is one,
/// else the identity.
struct AllReduce {
    group: Option<(usize, Arc<HostGroup>)>,
}

impl HostKernel for AllReduce {
    fn run(&self, _op: &Op, inputs: &[&HostTensor], outputs: &mut [&mut HostTensor]) -> Result<()> {
        let (Some(x), Some(out)) = (inputs.first(), outputs.first_mut()) else {
            return Err(Error::Graph(
                "all_reduce_sum takes one input and one output".into(),
            ));
        };
        let out = out.f32_mut()?;
        out.copy_from_slice(x.f32()?);
        match &self.group {
            Some((rank, g)) => g.all_reduce_sum(*rank, out),
            None => Ok(()),
        }
    }
}

impl<K: HostKernels> HostExecutor<K> {
    pub fn new(name: impl Into<String>, kernels: K) -> Self {
        HostExecutor {
            name: name.into(),
            kernels,
            buffers: HashMap::new(),
            next_id: 1,
            all_reduce: AllReduce { group: None },
        }
    }

    /// This executor runs shard `shard.rank` of a split model: `Op::AllReduceSum` sums with
    /// the other executors of `shard.group` in this process.
    pub fn with_shard(mut self, shard: &ShardOptions) -> Result<Self> {
        self.all_reduce.group = Some((shard.rank, host_group(shard)?));
        Ok(self)
    }

    fn kernel_for(&self, op: &Op) -> Option<&dyn HostKernel> {
        match op {
            Op::AllReduceSum => Some(&self.all_reduce),
            _ => self.kernels.kernel(op),
        }
    }

    fn buffer_mut(&mut self, id: BufferId) -> Result<&mut HostTensor> {
        let name = self.name.clone();
        self.buffers
            .get_mut(&id)
            .ok_or_else(|| Error::backend(name, format!("unknown buffer {}", id.0)))
    }
}

/// Where a node's tensor lives during execution.
enum Slot {
    Temp(usize),
    Buffer(BufferId),
}

impl<K: HostKernels> Backend for HostExecutor<K> {
    fn name(&self) -> &str {
        &self.name
    }

    fn probe(&self) -> ProbeReport {
        self.kernels.probe()
    }

    fn alloc(&mut self, desc: &TensorDesc) -> Result<BufferId> {
        let id = BufferId(self.next_id);
        self.next_id += 1;
        self.buffers.insert(
            id,
            HostTensor::zeros(format!("buffer {}", id.0), desc.clone()),
        );
        Ok(id)
    }

    fn free(&mut self, id: BufferId) -> Result<()> {
        self.buffers
            .remove(&id)
            .map(|_| ())
            .ok_or_else(|| Error::backend(&self.name, format!("free of unknown buffer {}", id.0)))
    }

    fn upload(&mut self, id: BufferId, data: &[u8]) -> Result<()> {
        self.buffer_mut(id)?.fill_from_bytes(data)
    }

    fn download(&mut self, id: BufferId) -> Result<Vec<u8>> {
        Ok(self.buffer_mut(id)?.to_bytes())
    }

    fn load_weight(&mut self, name: &str, desc: &TensorDesc, data: &[u8]) -> Result<BufferId> {
        let id = self.alloc(desc)?;
        let t = self.buffer_mut(id)?;
        t.name = name.to_string();
        t.fill_from_bytes(data)?;
        Ok(id)
    }

    fn execute(&mut self, graph: &Graph) -> Result<()> {
        // A split model's shards meet in all-reduces: a shard that fails tells the others,
        // which would otherwise wait for it.
        let Some((rank, group)) = self.all_reduce.group.clone() else {
            return self.run_graph(graph);
        };
        group.begin_step(rank);
        let result = self.run_graph(graph);
        if let Err(e) = &result {
            group.abort(rank, &e.to_string());
        }
        result
    }
}

impl<K: HostKernels> HostExecutor<K> {
    /// Run every node of `graph` on the host buffers.
    fn run_graph(&mut self, graph: &Graph) -> Result<()> {
        graph.validate()?;
        let slot = |v: usize| match graph.values[v].kind {
            ValueKind::Weight(b)
            | ValueKind::Input(b)
            | ValueKind::State(b)
            | ValueKind::Output(b) => Slot::Buffer(b),
            ValueKind::Temp => Slot::Temp(v),
        };
        // Bound buffers must match the graph's description of them.
        for v in &graph.values {
            if let ValueKind::Weight(b)
            | ValueKind::Input(b)
            | ValueKind::State(b)
            | ValueKind::Output(b) = v.kind
            {
                let t = self.buffers.get(&b).ok_or_else(|| {
                    Error::backend(
                        &self.name,
                        format!("'{}' is bound to unknown buffer {}", v.name, b.0),
                    )
                })?;
                t.desc.check_binds(&v.name, &v.desc)?;
            }
        }
        // Free each temporary after its last reader.
        let mut last_use = vec![usize::MAX; graph.values.len()];
        for (n, node) in graph.nodes.iter().enumerate() {
            for id in node.inputs.iter().chain(&node.outputs) {
                last_use[id.0 as usize] = n;
            }
        }
        let mut temps: Vec<Option<HostTensor>> = vec![None; graph.values.len()];
        for (n, node) in graph.nodes.iter().enumerate() {
            let mut outs: Vec<HostTensor> = Vec::with_capacity(node.outputs.len());
            for id in &node.outputs {
                let v = &graph.values[id.0 as usize];
                outs.push(match slot(id.0 as usize) {
                    Slot::Temp(_) => HostTensor::zeros(v.name.clone(), v.desc.clone()),
                    Slot::Buffer(b) => self.buffers.remove(&b).expect("checked above"),
                });
            }
            // The kernel runs under catch_unwind so that a panicking kernel cannot lose the
            // bound buffers taken out above; the panic resumes once they are back.
            let result = {
                let ins: Result<Vec<&HostTensor>> = node
                    .inputs
                    .iter()
                    .map(|id| match slot(id.0 as usize) {
                        Slot::Temp(t) => temps[t].as_ref().ok_or_else(|| {
                            Error::Graph(format!(
                                "'{}' read after it was freed",
                                graph.values[t].name
                            ))
                        }),
                        Slot::Buffer(b) => self.buffers.get(&b).ok_or_else(|| {
                            Error::Graph(format!(
                                "'{}' is both read and written by {}",
                                graph.values[id.0 as usize].name,
                                node.op.name()
                            ))
                        }),
                    })
                    .collect();
                let mut out_refs: Vec<&mut HostTensor> = outs.iter_mut().collect();
                match (ins, self.kernel_for(&node.op)) {
                    (Err(e), _) => Ok(Err(e)),
                    (Ok(ins), Some(k)) => {
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            k.run(&node.op, &ins, &mut out_refs)
                        }))
                    }
                    (Ok(_), None) => Ok(Err(Error::Unsupported {
                        backend: self.name.clone(),
                        what: format!("op '{}'", node.op.name()),
                    })),
                }
            };
            // Put bound buffers back even when the kernel failed, so nothing is lost.
            for (id, t) in node.outputs.iter().zip(outs) {
                match slot(id.0 as usize) {
                    Slot::Temp(v) => temps[v] = Some(t),
                    Slot::Buffer(b) => {
                        self.buffers.insert(b, t);
                    }
                }
            }
            let result = result.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            result.map_err(|e| match e {
                Error::Unsupported { .. } => e,
                other => Error::backend(
                    &self.name,
                    format!(
                        "{} ({}): {other}",
                        node.op.name(),
                        graph.values[node.outputs[0].0 as usize].name
                    ),
                ),
            })?;
            for id in node.inputs.iter().chain(&node.outputs) {
                if last_use[id.0 as usize] == n {
                    temps[id.0 as usize] = None;
                }
            }
        }
        Ok(())
    }
}
