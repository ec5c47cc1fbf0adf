//! The graph IR: one forward step of the model as a list of ops over tensor values.
//!
//! The model crate builds a [`Graph`]; a backend executes it. Values are either bound to
//! buffers the caller owns (weights, inputs, state such as the KV cache, outputs) or are
//! temporaries the backend manages. Every op documents its inputs and outputs with shape
//! and dtype; [`Graph::validate`] checks them before any backend sees the graph.

use crate::rope::RopeParams;
use crate::{BufferId, DType, Error, Result, TensorDesc};

#[repr(transparent)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub u32);

/// Where a value's storage comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// A loaded weight; read-only.
    Weight(BufferId),
    /// Per-step input written by the host (token ids, positions); read-only.
    Input(BufferId),
    /// Persistent state updated in place (KV cache). Appears among an op's outputs when the
    /// op writes it; the op sees its previous contents.
    State(BufferId),
    /// Result the host downloads after execution.
    Output(BufferId),
    /// Intermediate the backend allocates and frees.
    Temp,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    /// Debug name, e.g. `attn_norm.3`, so a dump diffs against a PyTorch run.
    pub name: String,
    pub desc: TensorDesc,
    pub kind: ValueKind,
}

/// Operations at the granularity gpt-oss needs. All arithmetic is described in f32 terms; a
/// backend may compute in lower precision and states its tolerance.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// in: table [V, H] (BF16|F32), ids [T] I32 -> out: [T, H] F32
    Embed,
    /// in: x [T, H], weight [H] -> out [T, H]; y = x / sqrt(mean(x^2) + eps) * w (w applied in f32)
    RmsNorm { eps: f32 },
    /// in: x [T, K], weight [N, K], optional bias [N] -> out [T, N]; y = x W^T + b
    Linear,
    /// in: x [T, heads*head_dim], positions [T] I32 -> out same shape; half-split pairing
    Rope { params: RopeParams, heads: u32 },
    /// Causal attention with per-head sinks over a KV cache.
    /// in: q [T, NQ*D], k [T, NKV*D], v [T, NKV*D], sinks [NQ], positions [T] I32
    /// out: o [T, NQ*D], k_cache [C, NKV*D] (State), v_cache [C, NKV*D] (State)
    /// k/v of position p are written to cache row p; query at p sees cached keys j <= p,
    /// and with `window > 0` only j > p - window.
    Attention {
        heads: u32,
        kv_heads: u32,
        head_dim: u32,
        window: u32,
        scale: f32,
    },
    /// Attention over a paged KV pool shared by several sequences (batched decode and
    /// chunked prefill in one step). Row t belongs to one sequence: its k/v go to pool row
    /// `slots[t]`, then it attends that sequence's keys `j <= positions[t]` (and, with a
    /// window, `j > positions[t] - window`), key j living at pool row
    /// `pages[t, j / page_size] * page_size + j % page_size`. Semantics otherwise as `Attention`.
    /// in: q [T, NQ*D], k [T, NKV*D], v [T, NKV*D], sinks [NQ], positions [T] I32,
    ///     slots [T] I32, pages [T, P] I32
    /// out: o [T, NQ*D], k_pool [R, NKV*D] (State), v_pool [R, NKV*D] (State), R = pages * page_size
    PagedAttention {
        heads: u32,
        kv_heads: u32,
        head_dim: u32,
        window: u32,
        scale: f32,
        page_size: u32,
    },
    /// in: x [T, N], rows [B] I32 -> out [B, N]: out[b] = x[rows[b]] (each sequence's last row)
    GatherRows,
    /// in: logits [T, E] -> out: ids [T, k] I32 (descending value, ties to the lower index),
    /// weights [T, k] F32 = softmax over the k selected logits
    TopKSoftmax { k: u32 },
    /// Mixture of MXFP4 experts with clamped SwiGLU.
    /// in: x [T, H], ids [T, k] I32, weights [T, k] F32,
    ///     gate_up_blocks [E, 2I, H/32, 16], gate_up_scales [E, 2I, H/32], gate_up_bias [E, 2I],
    ///     down_blocks [E, H, I/32, 16], down_scales [E, H, I/32], down_bias [E, H]
    /// out: [T, H]. Rows of gate_up interleave gate (even) and up (odd).
    /// An id of -1 names an expert held by another shard (see `LocalExperts`): that slot is
    /// skipped, contributing nothing.
    MoeMxfp4 { swiglu_limit: f32, alpha: f32 },
    /// Expert parallelism: this shard holds experts `first..first + count`.
    /// in: ids [T, k] I32 (global) -> out: ids [T, k] I32, `id - first` for the held experts
    /// and -1 for the others.
    LocalExperts { first: u32, count: u32 },
    /// Tensor/expert parallelism: the element-wise sum of `x` over every shard of the group
    /// this backend was created in (the identity for a backend that is not sharded).
    /// in: x [T, N] F32 -> out [T, N] F32. Every shard must run its nodes in the same order.
    AllReduceSum,
    /// in: a, b (same shape) -> out: a + b
    Add,
    /// in: x [T, N] -> out: [1, N], the last row (decode only needs the last position's logits)
    LastRow,
    /// in: x [T, N] -> out: [T] I32, index of the maximum (first on ties)
    Argmax,
}

impl Op {
    pub fn name(&self) -> &'static str {
        match self {
            Op::Embed => "embed",
            Op::RmsNorm { .. } => "rms_norm",
            Op::Linear => "linear",
            Op::Rope { .. } => "rope",
            Op::Attention { .. } => "attention",
            Op::PagedAttention { .. } => "paged_attention",
            Op::GatherRows => "gather_rows",
            Op::TopKSoftmax { .. } => "topk_softmax",
            Op::MoeMxfp4 { .. } => "moe_mxfp4",
            Op::LocalExperts { .. } => "local_experts",
            Op::AllReduceSum => "all_reduce_sum",
            Op::Add => "add",
            Op::LastRow => "last_row",
            Op::Argmax => "argmax",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub op: Op,
    pub inputs: Vec<ValueId>,
    pub outputs: Vec<ValueId>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Graph {
    pub values: Vec<Value>,
    pub nodes: Vec<Node>,
}

impl Graph {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn value(&self, id: ValueId) -> &Value {
        &self.values[id.0 as usize]
    }

    pub fn add_value(
        &mut self,
        name: impl Into<String>,
        desc: TensorDesc,
        kind: ValueKind,
    ) -> ValueId {
        self.values.push(Value {
            name: name.into(),
            desc,
            kind,
        });
        ValueId(self.values.len() as u32 - 1)
    }

    pub fn push(&mut self, op: Op, inputs: Vec<ValueId>, outputs: Vec<ValueId>) {
        self.nodes.push(Node {
            op,
            inputs,
            outputs,
        });
    }

    /// Check every node's arity, shapes and dtypes, and that each temp is written before it
    /// is read. A backend may rely on a validated graph.
    pub fn validate(&self) -> Result<()> {
        let mut written: Vec<bool> = self
            .values
            .iter()
            .map(|v| !matches!(v.kind, ValueKind::Temp | ValueKind::Output(_)))
            .collect();
        for (n, node) in self.nodes.iter().enumerate() {
            for id in node.inputs.iter().chain(&node.outputs) {
                if id.0 as usize >= self.values.len() {
                    return Err(Error::Graph(format!(
                        "node {n} ({}) refers to missing value {}",
                        node.op.name(),
                        id.0
                    )));
                }
            }
            for id in &node.inputs {
                if !written[id.0 as usize] {
                    return Err(Error::Graph(format!(
                        "node {n} ({}) reads '{}' before anything writes it",
                        node.op.name(),
                        self.value(*id).name
                    )));
                }
            }
            for id in &node.outputs {
                if matches!(
                    self.value(*id).kind,
                    ValueKind::Weight(_) | ValueKind::Input(_)
                ) {
                    return Err(Error::Graph(format!(
                        "node {n} ({}) writes read-only '{}'",
                        node.op.name(),
                        self.value(*id).name
                    )));
                }
            }
            crate::graph_check::check_node(self, node)
                .map_err(|e| Error::Graph(format!("node {n} ({}): {e}", node.op.name())))?;
            for id in &node.outputs {
                written[id.0 as usize] = true;
            }
        }
        Ok(())
    }
}

/// Dtypes that carry ordinary floating-point values.
pub fn is_float(d: DType) -> bool {
    matches!(d, DType::F32 | DType::BF16 | DType::F16)
}
