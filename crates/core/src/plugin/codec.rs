//! Conversions between the core's Rust types and their C ABI forms.

use super::abi::*;
use crate::graph::{Op, ValueKind};
use crate::rope::{RopeParams, Yarn};
use crate::{BufferId, DType, Error, Graph, Result, Shape, TensorDesc, Value, ValueId};

pub fn desc_to_c(d: &TensorDesc) -> Result<GTensorDesc> {
    let dims = d.shape.dims();
    if dims.len() > 8 {
        return Err(Error::Graph(format!(
            "tensor of rank {} cannot cross the plugin ABI (at most 8)",
            dims.len()
        )));
    }
    let mut out = GTensorDesc {
        dtype: d.dtype as u32,
        rank: dims.len() as u32,
        dims: [0; 8],
    };
    for (o, v) in out.dims.iter_mut().zip(dims) {
        *o = *v as u64;
    }
    Ok(out)
}

pub fn desc_from_c(d: &GTensorDesc) -> Result<TensorDesc> {
    let dtype = DType::from_u32(d.dtype)
        .ok_or_else(|| Error::Graph(format!("unknown dtype code {}", d.dtype)))?;
    if d.rank > 8 {
        return Err(Error::Graph(format!("rank {} > 8", d.rank)));
    }
    let dims: Vec<usize> = d.dims[..d.rank as usize]
        .iter()
        .map(|v| *v as usize)
        .collect();
    Ok(TensorDesc {
        dtype,
        shape: Shape(dims),
    })
}

const OP_EMBED: u32 = 0;
const OP_RMS_NORM: u32 = 1;
const OP_LINEAR: u32 = 2;
const OP_ROPE: u32 = 3;
const OP_ATTENTION: u32 = 4;
const OP_TOPK_SOFTMAX: u32 = 5;
const OP_MOE_MXFP4: u32 = 6;
const OP_ADD: u32 = 7;
const OP_LAST_ROW: u32 = 8;
const OP_ARGMAX: u32 = 9;
const OP_LOCAL_EXPERTS: u32 = 10;
const OP_ALL_REDUCE_SUM: u32 = 11;
const OP_PAGED_ATTENTION: u32 = 12;
const OP_GATHER_ROWS: u32 = 13;

pub fn op_to_c(op: &Op) -> (u32, GOpParams) {
    let mut p = GOpParams::default();
    let code = match op {
        Op::Embed => OP_EMBED,
        Op::RmsNorm { eps } => {
            p.f[0] = *eps;
            OP_RMS_NORM
        }
        Op::Linear => OP_LINEAR,
        Op::Rope { params, heads } => {
            p.u[0] = params.head_dim;
            p.u[1] = *heads;
            p.f[0] = params.theta;
            if let Some(y) = params.yarn {
                p.u[2] = 1;
                p.f[1] = y.factor;
                p.f[2] = y.beta_fast;
                p.f[3] = y.beta_slow;
                p.u[3] = y.original_max_position_embeddings;
                p.u[4] = y.truncate as u32;
                if let Some(a) = y.attention_factor {
                    p.u[5] = 1;
                    p.f[4] = a;
                }
            }
            OP_ROPE
        }
        Op::Attention {
            heads,
            kv_heads,
            head_dim,
            window,
            scale,
        } => {
            p.u[..4].copy_from_slice(&[*heads, *kv_heads, *head_dim, *window]);
            p.f[0] = *scale;
            OP_ATTENTION
        }
        Op::TopKSoftmax { k } => {
            p.u[0] = *k;
            OP_TOPK_SOFTMAX
        }
        Op::MoeMxfp4 {
            swiglu_limit,
            alpha,
        } => {
            p.f[0] = *swiglu_limit;
            p.f[1] = *alpha;
            OP_MOE_MXFP4
        }
        Op::Add => OP_ADD,
        Op::LastRow => OP_LAST_ROW,
        Op::Argmax => OP_ARGMAX,
        Op::LocalExperts { first, count } => {
            p.u[0] = *first;
            p.u[1] = *count;
            OP_LOCAL_EXPERTS
        }
        Op::AllReduceSum => OP_ALL_REDUCE_SUM,
        Op::PagedAttention {
            heads,
            kv_heads,
            head_dim,
            window,
            scale,
            page_size,
        } => {
            p.u[..5].copy_from_slice(&[*heads, *kv_heads, *head_dim, *window, *page_size]);
            p.f[0] = *scale;
            OP_PAGED_ATTENTION
        }
        Op::GatherRows => OP_GATHER_ROWS,
    };
    (code, p)
}

pub fn op_from_c(code: u32, p: &GOpParams) -> Result<Op> {
    Ok(match code {
        OP_EMBED => Op::Embed,
        OP_RMS_NORM => Op::RmsNorm { eps: p.f[0] },
        OP_LINEAR => Op::Linear,
        OP_ROPE => Op::Rope {
            params: RopeParams {
                head_dim: p.u[0],
                theta: p.f[0],
                yarn: (p.u[2] == 1).then(|| Yarn {
                    factor: p.f[1],
                    beta_fast: p.f[2],
                    beta_slow: p.f[3],
                    original_max_position_embeddings: p.u[3],
                    truncate: p.u[4] == 1,
                    attention_factor: (p.u[5] == 1).then_some(p.f[4]),
                }),
            },
            heads: p.u[1],
        },
        OP_ATTENTION => Op::Attention {
            heads: p.u[0],
            kv_heads: p.u[1],
            head_dim: p.u[2],
            window: p.u[3],
            scale: p.f[0],
        },
        OP_TOPK_SOFTMAX => Op::TopKSoftmax { k: p.u[0] },
        OP_MOE_MXFP4 => Op::MoeMxfp4 {
            swiglu_limit: p.f[0],
            alpha: p.f[1],
        },
        OP_ADD => Op::Add,
        OP_LAST_ROW => Op::LastRow,
        OP_ARGMAX => Op::Argmax,
        OP_LOCAL_EXPERTS => Op::LocalExperts {
            first: p.u[0],
            count: p.u[1],
        },
        OP_ALL_REDUCE_SUM => Op::AllReduceSum,
        OP_PAGED_ATTENTION => Op::PagedAttention {
            heads: p.u[0],
            kv_heads: p.u[1],
            head_dim: p.u[2],
            window: p.u[3],
            page_size: p.u[4],
            scale: p.f[0],
        },
        OP_GATHER_ROWS => Op::GatherRows,
        other => {
            return Err(Error::Graph(format!(
                "unknown op code {other} (a newer host?)"
            )))
        }
    })
}

/// Reusable storage for a graph's C form: a host that executes many graphs keeps one and
/// refills it per graph, so a step allocates nothing once the vectors have grown.
#[derive(Default)]
pub struct GraphEncoder {
    values: Vec<GValue>,
    /// Every node's inputs then outputs, node after node.
    io: Vec<u32>,
    nodes: Vec<GNode>,
}

// The raw pointers left in the vectors between calls point into graphs no longer borrowed
// and are never read before being overwritten.
unsafe impl Send for GraphEncoder {}

/// A graph laid out as C arrays, borrowing the [`Graph`] (its value names are not copied)
/// and the [`GraphEncoder`]'s storage for as long as the [`GGraph`] is used.
pub struct EncodedGraph<'a> {
    c: GGraph,
    _borrows: std::marker::PhantomData<(&'a Graph, &'a mut GraphEncoder)>,
}

impl GraphEncoder {
    pub fn new() -> GraphEncoder {
        GraphEncoder::default()
    }

    /// Lay `g` out as C arrays in this encoder's storage.
    pub fn encode<'a>(&'a mut self, g: &'a Graph) -> Result<EncodedGraph<'a>> {
        self.values.clear();
        self.values.reserve(g.values.len());
        for v in &g.values {
            let (kind, buffer) = match v.kind {
                ValueKind::Weight(b) => (VALUE_WEIGHT, b.0),
                ValueKind::Input(b) => (VALUE_INPUT, b.0),
                ValueKind::State(b) => (VALUE_STATE, b.0),
                ValueKind::Output(b) => (VALUE_OUTPUT, b.0),
                ValueKind::Temp => (VALUE_TEMP, 0),
            };
            self.values.push(GValue {
                name: GStr::new(&v.name),
                desc: desc_to_c(&v.desc)?,
                kind,
                buffer,
            });
        }
        // All ids first: `io` must not grow once nodes point into it.
        self.io.clear();
        let n_io = g
            .nodes
            .iter()
            .map(|n| n.inputs.len() + n.outputs.len())
            .sum();
        self.io.reserve(n_io);
        for n in &g.nodes {
            self.io
                .extend(n.inputs.iter().chain(&n.outputs).map(|v| v.0));
        }
        self.nodes.clear();
        self.nodes.reserve(g.nodes.len());
        let mut at = 0;
        for n in &g.nodes {
            let (op, params) = op_to_c(&n.op);
            let (ni, no) = (n.inputs.len(), n.outputs.len());
            let ins = &self.io[at..at + ni];
            let outs = &self.io[at + ni..at + ni + no];
            at += ni + no;
            self.nodes.push(GNode {
                op,
                params,
                inputs: ins.as_ptr(),
                n_inputs: ni,
                outputs: outs.as_ptr(),
                n_outputs: no,
            });
        }
        Ok(EncodedGraph {
            c: GGraph {
                values: self.values.as_ptr(),
                n_values: self.values.len(),
                nodes: self.nodes.as_ptr(),
                n_nodes: self.nodes.len(),
            },
            _borrows: std::marker::PhantomData,
        })
    }
}

impl EncodedGraph<'_> {
    pub fn as_c(&self) -> GGraph {
        self.c
    }
}

unsafe fn slice<'a, T>(ptr: *const T, len: usize) -> &'a [T] {
    if len == 0 {
        &[]
    } else {
        std::slice::from_raw_parts(ptr, len)
    }
}

/// Rebuild a [`Graph`] from its C form (plugin side).
///
/// # Safety
/// `g` must describe arrays that are valid for the duration of the call (the host guarantees
/// this for the graph passed to `execute`).
pub unsafe fn graph_from_c(g: &GGraph) -> Result<Graph> {
    let mut out = Graph::new();
    graph_from_c_into(g, &mut out)?;
    Ok(out)
}

/// [`graph_from_c`] into `out`, reusing its allocations: the plugin SDK keeps the previous
/// step's graph and overwrites it, so a step like the previous one allocates nothing (names
/// equal to the ones already there are not even copied). On an error `out` holds a partly
/// overwritten graph, fit only to be overwritten again.
///
/// # Safety
/// As [`graph_from_c`].
pub unsafe fn graph_from_c_into(g: &GGraph, out: &mut Graph) -> Result<()> {
    let values = slice(g.values, g.n_values);
    out.values.truncate(values.len());
    for (i, v) in values.iter().enumerate() {
        let bytes = slice(v.name.ptr, v.name.len);
        let b = BufferId(v.buffer);
        let kind = match v.kind {
            VALUE_WEIGHT => ValueKind::Weight(b),
            VALUE_INPUT => ValueKind::Input(b),
            VALUE_STATE => ValueKind::State(b),
            VALUE_OUTPUT => ValueKind::Output(b),
            VALUE_TEMP => ValueKind::Temp,
            k => {
                let name = String::from_utf8_lossy(bytes);
                return Err(Error::Graph(format!("value '{name}' has unknown kind {k}")));
            }
        };
        let d = &v.desc;
        let dtype = DType::from_u32(d.dtype)
            .ok_or_else(|| Error::Graph(format!("unknown dtype code {}", d.dtype)))?;
        if d.rank > 8 {
            return Err(Error::Graph(format!("rank {} > 8", d.rank)));
        }
        let dims = d.dims[..d.rank as usize].iter().map(|x| *x as usize);
        if i == out.values.len() {
            let name = std::str::from_utf8(bytes)
                .map_err(|e| Error::Graph(format!("value name is not UTF-8: {e}")))?;
            out.values.push(Value {
                name: name.to_owned(),
                desc: TensorDesc {
                    dtype,
                    shape: Shape(dims.collect()),
                },
                kind,
            });
            continue;
        }
        let o = &mut out.values[i];
        if o.name.as_bytes() != bytes {
            let name = std::str::from_utf8(bytes)
                .map_err(|e| Error::Graph(format!("value name is not UTF-8: {e}")))?;
            o.name.clear();
            o.name.push_str(name);
        }
        o.desc.dtype = dtype;
        o.desc.shape.0.clear();
        o.desc.shape.0.extend(dims);
        o.kind = kind;
    }
    let nodes = slice(g.nodes, g.n_nodes);
    out.nodes.truncate(nodes.len());
    for (i, n) in nodes.iter().enumerate() {
        let op = op_from_c(n.op, &n.params)?;
        let ins = slice(n.inputs, n.n_inputs).iter().map(|v| ValueId(*v));
        let outs = slice(n.outputs, n.n_outputs).iter().map(|v| ValueId(*v));
        if i == out.nodes.len() {
            out.push(op, ins.collect(), outs.collect());
            continue;
        }
        let o = &mut out.nodes[i];
        o.op = op;
        o.inputs.clear();
        o.inputs.extend(ins);
        o.outputs.clear();
        o.outputs.extend(outs);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_round_trips() {
        let rope = RopeParams {
            head_dim: 64,
            theta: 150000.0,
            yarn: Some(Yarn {
                factor: 32.0,
                beta_fast: 32.0,
                beta_slow: 1.0,
                original_max_position_embeddings: 4096,
                truncate: false,
                attention_factor: Some(1.5),
            }),
        };
        let ops = [
            Op::Embed,
            Op::RmsNorm { eps: 1e-5 },
            Op::Linear,
            Op::Rope {
                params: rope,
                heads: 8,
            },
            Op::Rope {
                params: RopeParams { yarn: None, ..rope },
                heads: 2,
            },
            Op::Attention {
                heads: 64,
                kv_heads: 8,
                head_dim: 64,
                window: 128,
                scale: 0.125,
            },
            Op::TopKSoftmax { k: 4 },
            Op::MoeMxfp4 {
                swiglu_limit: 7.0,
                alpha: 1.702,
            },
            Op::Add,
            Op::LastRow,
            Op::Argmax,
            Op::LocalExperts {
                first: 16,
                count: 8,
            },
            Op::AllReduceSum,
            Op::PagedAttention {
                heads: 64,
                kv_heads: 8,
                head_dim: 64,
                window: 128,
                scale: 0.125,
                page_size: 16,
            },
            Op::GatherRows,
        ];
        for op in ops {
            let (c, p) = op_to_c(&op);
            assert_eq!(op_from_c(c, &p).unwrap(), op);
        }
        assert!(op_from_c(99, &GOpParams::default())
            .unwrap_err()
            .to_string()
            .contains("99"));
    }

    #[test]
    fn graph_round_trips() {
        let mut g = Graph::new();
        let a = g.add_value(
            "a",
            TensorDesc::new(DType::F32, [2, 3]),
            ValueKind::Input(BufferId(7)),
        );
        let b = g.add_value(
            "b",
            TensorDesc::new(DType::BF16, [2, 3]),
            ValueKind::Weight(BufferId(8)),
        );
        let c = g.add_value("c", TensorDesc::new(DType::F32, [2, 3]), ValueKind::Temp);
        let d = g.add_value(
            "d",
            TensorDesc::new(DType::I32, [2]),
            ValueKind::Output(BufferId(9)),
        );
        g.push(Op::Add, vec![a, b], vec![c]);
        g.push(Op::Argmax, vec![c], vec![d]);
        let mut encoder = GraphEncoder::new();
        let enc = encoder.encode(&g).unwrap();
        let back = unsafe { graph_from_c(&enc.as_c()) }.unwrap();
        assert_eq!(back, g);

        // Decoding over an earlier graph (what the SDK does per step) leaves exactly the new
        // one, whether it is smaller, larger or differs only in names and buffers.
        let mut small = Graph::new();
        let x = small.add_value(
            "x",
            TensorDesc::new(DType::F32, [4]),
            ValueKind::Input(BufferId(1)),
        );
        let y = small.add_value(
            "a longer name",
            TensorDesc::new(DType::I32, [4]),
            ValueKind::Output(BufferId(2)),
        );
        small.push(Op::Argmax, vec![x], vec![y]);
        let mut renamed = g.clone();
        renamed.values[1].name = "b2".into();
        renamed.values[0].kind = ValueKind::Input(BufferId(70));
        renamed.values[3].desc = TensorDesc::new(DType::I32, [5, 1]);
        let mut out = Graph::new();
        for want in [&g, &small, &g, &renamed, &small] {
            let enc = encoder.encode(want).unwrap();
            unsafe { graph_from_c_into(&enc.as_c(), &mut out) }.unwrap();
            assert_eq!(&out, want);
        }
    }
}
