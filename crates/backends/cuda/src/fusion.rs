//! Peephole fusion: runs of a step's nodes issued as fewer launches. A decode step is ~17
//! small launches a layer, each costing a few microseconds whatever its size, so:
//! - q/k/v (up to three linears reading the same x) as one GEMV launch;
//! - RoPE of q and k as one launch, or, for one decode token, inside the split attention that
//!   reads them (`RopeAttention`: no RoPE launch, no kv_write);
//! - a residual add with the RMSNorm after it (`add_rms_norm`);
//! - the MoE's combine with the residual add and the next RMSNorm (`moe_combine_add_norm`);
//! - the router linear with the top-k softmax of its logits (`router_topk`, few tokens), and
//!   that with the residual add and RMSNorm before it (`add_norm_router_spread`); for one
//!   token whose MoE takes the one-pair moe_t1 kernels, the router forms only the logits
//!   (`add_norm_router_logits`) and the MoE's kernels take the top-k from them (no router
//!   block waits for the others: GPTOSS_CUDA_TOPK_IN_MOE=0 turns it off).
//!
//! Each runs the same arithmetic as the separate kernels. A run is fused only when every
//! value it leaves unwritten is a temporary read by nothing else; `GPTOSS_CUDA_NO_FUSION=1`
//! turns it off with the other fast paths.

use gptoss_core::graph::{Node, Op, ValueKind};
use gptoss_core::{DType, Graph, Result, Value, ValueId};

use crate::driver::CUdeviceptr;
use crate::ops::{self, GemvSegment, MoeTail};
use crate::{Cuda, Flavor};

/// The largest row the fused norm kernels hold in registers (4 float4 chunks x 256 threads).
const NORM_MAX_H: usize = 4096;

/// A run of nodes starting at the current one that launches as one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pattern {
    /// `count` (2 or 3) Linear nodes over the same input.
    Linears { count: usize },
    /// Two Rope nodes at the same positions with the same parameters.
    RopePair,
    /// A RopePair of q and k, then the Attention of one token that alone reads them.
    RopeAttention,
    /// Add, then RmsNorm of its sum.
    AddNorm,
    /// MoeMxfp4, Add of its output to the residual, then (`norm`) RmsNorm of the sum.
    MoeAddNorm { norm: bool },
    /// MoeAddNorm with the norm, of one token, then `count` linears that alone read the normed
    /// row: the combine, add and norm inside their GEMV (`gemv_bf16_t1_moe`).
    MoeNormLinears { count: usize },
    /// The router Linear, then TopKSoftmax of its logits.
    RouterTopK,
    /// AddNorm, then a RouterTopK of the normed row (few tokens: the spread router). With
    /// `defer` (one token, the MoE node right after alone reads the ids and weights) the
    /// router forms only the logits and the MoE takes the top-k (`add_norm_router_logits`).
    AddNormRouter { defer: bool },
}

impl Pattern {
    /// How many nodes the run covers.
    pub fn len(self) -> usize {
        match self {
            Pattern::Linears { count } => count,
            Pattern::RopePair | Pattern::AddNorm | Pattern::RouterTopK => 2,
            Pattern::MoeAddNorm { norm } => 2 + norm as usize,
            Pattern::MoeNormLinears { count } => 3 + count,
            Pattern::RopeAttention => 3,
            Pattern::AddNormRouter { .. } => 4,
        }
    }
}

fn dims(v: &Value) -> &[usize] {
    v.desc.shape.dims()
}

fn is_f32(v: &Value) -> bool {
    v.desc.dtype == DType::F32
}

/// Whether `id` is a temporary read by no node after `reader`.
fn private_temp(graph: &Graph, last_use: &[usize], id: ValueId, reader: usize) -> bool {
    matches!(graph.value(id).kind, ValueKind::Temp) && last_use[id.0 as usize] == reader
}

/// A row the fused norms can hold: f32 rows of a multiple of 4 floats, at most NORM_MAX_H.
fn norm_row_fits(v: &Value) -> bool {
    let d = dims(v);
    is_f32(v) && d.len() == 2 && d[1] % 4 == 0 && d[1] <= NORM_MAX_H
}

/// Whether node `b` is an RmsNorm of `x` (its input 0) with an f32 output.
fn norm_of(graph: &Graph, b: &Node, x: ValueId) -> bool {
    matches!(b.op, Op::RmsNorm { .. })
        && b.inputs[0] == x
        && is_f32(graph.value(b.outputs[0]))
        && norm_row_fits(graph.value(x))
}

/// The fusable run that starts at node `n`, if any.
pub(crate) fn pattern_at<F: Flavor>(
    be: &Cuda<F>,
    graph: &Graph,
    n: usize,
    last_use: &[usize],
) -> Option<Pattern> {
    if !be.fast {
        return None;
    }
    let nodes = &graph.nodes;
    let node = &nodes[n];
    let next = nodes.get(n + 1);
    let fused = be.kernels.has("add_rms_norm");
    match &node.op {
        Op::Linear => {
            let count = linear_run(be, graph, n);
            if count >= 2 {
                return Some(Pattern::Linears { count });
            }
            router_topk_at(graph, n, last_use).then_some(Pattern::RouterTopK)
        }
        Op::Rope { params, .. } if fused => {
            let b = next?;
            let same = matches!(&b.op, Op::Rope { params: p, .. } if p == params)
                && b.inputs[1] == node.inputs[1]
                && [node.inputs[0], node.outputs[0], b.inputs[0], b.outputs[0]]
                    .iter()
                    .all(|v| is_f32(graph.value(*v)));
            if !same {
                return None;
            }
            if rope_attention_at(be, graph, n, last_use) {
                return Some(Pattern::RopeAttention);
            }
            Some(Pattern::RopePair)
        }
        Op::Add if fused => {
            let b = next?;
            let sum = node.outputs[0];
            let f32s = node.inputs.iter().all(|v| is_f32(graph.value(*v)));
            if !(f32s && norm_of(graph, b, sum)) {
                return None;
            }
            let routes = nodes.get(n + 2).is_some_and(|lin| {
                lin.op == Op::Linear
                    && lin.inputs[0] == b.outputs[0]
                    && router_topk_at(graph, n + 2, last_use)
                    && ops::router_spread_fits(
                        be,
                        dims(graph.value(sum))[0],
                        dims(graph.value(lin.inputs[1]))[0],
                    )
                    && be.kernels.has("add_norm_router_spread")
            });
            Some(if routes {
                Pattern::AddNormRouter {
                    defer: topk_deferrable(be, graph, n + 3, last_use),
                }
            } else {
                Pattern::AddNorm
            })
        }
        Op::MoeMxfp4 { .. } if fused => {
            let add = next?;
            let m = node.outputs[0];
            let adds_m = add.op == Op::Add
                && add.inputs[1] == m
                && add.inputs[0] != m
                && is_f32(graph.value(add.inputs[0]))
                && norm_row_fits(graph.value(add.outputs[0]))
                && private_temp(graph, last_use, m, n + 1);
            if !adds_m {
                return None;
            }
            let norm = nodes
                .get(n + 2)
                .is_some_and(|b| norm_of(graph, b, add.outputs[0]));
            if norm {
                if let Some(count) = norm_linears_at(be, graph, n + 2, last_use) {
                    return Some(Pattern::MoeNormLinears { count });
                }
            }
            Some(Pattern::MoeAddNorm { norm })
        }
        _ => None,
    }
}

/// The linears after the RmsNorm at `n` (one token) that take its row into the GEMV with the
/// MoE's combine: a run of 1..3 GEMV linears over the normed row, which nothing else reads, of
/// a row the kernel's block holds (H <= 4096).
fn norm_linears_at<F: Flavor>(
    be: &Cuda<F>,
    graph: &Graph,
    n: usize,
    last_use: &[usize],
) -> Option<usize> {
    let normed = graph.nodes[n].outputs[0];
    let lin = graph.nodes.get(n + 1)?;
    let d = dims(graph.value(normed));
    let count = linear_run(be, graph, n + 1);
    (lin.op == Op::Linear
        && lin.inputs[0] == normed
        && d[0] == 1
        && d[1] <= NORM_MAX_H
        && count >= 1
        && matches!(graph.value(normed).kind, ValueKind::Temp)
        && last_use[normed.0 as usize] <= n + count
        && be.gemv_combine
        && be.kernels.has("gemv_bf16_t1_moe"))
    .then_some(count)
}

/// Whether node `n` is a router Linear (few tokens, bf16 weights) whose logits only feed the
/// TopKSoftmax right after it, within `router_topk`'s limits.
fn router_topk_at(graph: &Graph, n: usize, last_use: &[usize]) -> bool {
    let (lin, Some(top)) = (&graph.nodes[n], graph.nodes.get(n + 1)) else {
        return false;
    };
    let Op::TopKSoftmax { k } = top.op else {
        return false;
    };
    let logits = lin.outputs[0];
    let (x, w) = (graph.value(lin.inputs[0]), graph.value(lin.inputs[1]));
    if top.inputs[0] != logits || dims(x).len() != 2 || dims(w).len() != 2 {
        return false;
    }
    let (t, h, e) = (dims(x)[0], dims(x)[1], dims(w)[0]);
    is_f32(x)
        && is_f32(graph.value(top.outputs[1]))
        && w.desc.dtype == DType::BF16
        && h % 8 == 0
        && t < 64
        && e <= 1024
        && k <= 32
        && (h + e) * 4 <= 48 << 10
        && private_temp(graph, last_use, logits, n + 1)
}

/// Whether the one-token TopKSoftmax at `n` can leave its top-k to the MoeMxfp4 node right
/// after it: that node alone reads its ids and weights (so nothing else sees them before the
/// MoE's kernels write them), its experts are the router's (no expert-parallel remapping in
/// between), at most ops::TOPK_IN_MOE_MAX_E of them.
fn topk_deferrable<F: Flavor>(be: &Cuda<F>, graph: &Graph, n: usize, last_use: &[usize]) -> bool {
    let (top, Some(moe)) = (&graph.nodes[n], graph.nodes.get(n + 1)) else {
        return false;
    };
    let Op::TopKSoftmax { k } = top.op else {
        return false;
    };
    let (ids, wts) = (top.outputs[0], top.outputs[1]);
    let logits = graph.value(top.inputs[0]);
    let (t, e) = (dims(logits)[0], dims(logits)[1]);
    be.topk_in_moe
        && be.kernels.has("add_norm_router_logits")
        && matches!(moe.op, Op::MoeMxfp4 { .. })
        && moe.inputs.get(1) == Some(&ids)
        && moe.inputs.get(2) == Some(&wts)
        && moe
            .inputs
            .get(3)
            .is_some_and(|gu| dims(graph.value(*gu)).first() == Some(&e))
        && private_temp(graph, last_use, ids, n + 1)
        && private_temp(graph, last_use, wts, n + 1)
        && t == 1
        && e <= ops::TOPK_IN_MOE_MAX_E
        && (k as usize) <= e.min(32)
}

/// Whether the Rope pair at `n`, `n + 1` rotates the q and k of the one-token Attention at
/// `n + 2` (same positions, head counts matching), their outputs read by nothing else, and the
/// attention takes the split kernel (head_dim 64).
fn rope_attention_at<F: Flavor>(be: &Cuda<F>, graph: &Graph, n: usize, last_use: &[usize]) -> bool {
    let (a, b) = (&graph.nodes[n], &graph.nodes[n + 1]);
    let Some(att) = graph.nodes.get(n + 2) else {
        return false;
    };
    let (
        Op::Rope { params, heads: ha },
        Op::Rope { heads: hb, .. },
        Op::Attention {
            heads,
            kv_heads,
            head_dim,
            ..
        },
    ) = (&a.op, &b.op, &att.op)
    else {
        return false;
    };
    let (qa, kb) = (att.inputs[0] == a.outputs[0], att.inputs[1] == b.outputs[0]);
    let (qb, ka) = (att.inputs[0] == b.outputs[0], att.inputs[1] == a.outputs[0]);
    let heads_match = (qa && kb && *ha == *heads && *hb == *kv_heads)
        || (qb && ka && *hb == *heads && *ha == *kv_heads);
    heads_match
        && *head_dim == 64
        && params.head_dim == 64
        && *kv_heads > 0
        && *heads % *kv_heads == 0
        && att.inputs[4] == a.inputs[1]
        && dims(graph.value(att.inputs[0]))[0] == 1
        && [
            att.inputs[2],
            att.outputs[0],
            att.outputs[1],
            att.outputs[2],
        ]
        .iter()
        .all(|v| is_f32(graph.value(*v)))
        && private_temp(graph, last_use, a.outputs[0], n + 2)
        && private_temp(graph, last_use, b.outputs[0], n + 2)
        && be.kernels.has("attention_split")
}

/// How many Linear nodes from `n` on (at most 3) read the same input with bf16 weights of the
/// same K, biases of one dtype, and each on the GEMV path.
fn linear_run<F: Flavor>(be: &Cuda<F>, graph: &Graph, n: usize) -> usize {
    let first = &graph.nodes[n];
    let x = graph.value(first.inputs[0]);
    if !is_f32(x) || dims(x).len() != 2 {
        return 0;
    }
    let (t, k) = (dims(x)[0], dims(x)[1]);
    let bias_dtype = |node: &Node| node.inputs.get(2).map(|b| graph.value(*b).desc.dtype);
    let mut count = 0;
    let mut bdt = None;
    for node in graph.nodes[n..].iter().take(3) {
        let ok = node.op == Op::Linear
            && node.inputs[0] == first.inputs[0]
            && is_f32(graph.value(node.outputs[0]))
            && {
                let w = graph.value(node.inputs[1]);
                dims(w).len() == 2 && dims(w)[1] == k && ops::gemv_fits(be, w, t, k, dims(w)[0])
            }
            && match (bias_dtype(node), bdt) {
                (Some(d), Some(e)) => d == e,
                _ => true,
            };
        if !ok {
            break;
        }
        bdt = bdt.or(bias_dtype(node));
        count += 1;
    }
    count
}

/// A linear node's bias (its optional third input) and the bias's dtype code.
fn linear_bias(
    graph: &Graph,
    ptrs: &[Option<CUdeviceptr>],
    node: &Node,
) -> Result<Option<(CUdeviceptr, i32)>> {
    node.inputs
        .get(2)
        .map(|b| {
            Ok((
                ops::value_ptr(graph, ptrs, *b)?,
                ops::float_code(graph.value(*b))?,
            ))
        })
        .transpose()
}

/// The GEMV segments of a run of linears over one input, and their bias dtype code.
fn gemv_segments(
    graph: &Graph,
    nodes: &[Node],
    ptrs: &[Option<CUdeviceptr>],
) -> Result<(Vec<GemvSegment>, i32)> {
    let ptr = |id: ValueId| ops::value_ptr(graph, ptrs, id);
    let mut bdt = 0;
    let mut segs = Vec::with_capacity(nodes.len());
    for node in nodes {
        let bias = match linear_bias(graph, ptrs, node)? {
            Some((b, code)) => {
                bdt = code;
                b
            }
            None => 0,
        };
        segs.push(GemvSegment {
            w: ptr(node.inputs[1])?,
            bias,
            y: ptr(node.outputs[0])?,
            n: dims(graph.value(node.inputs[1]))[0],
        });
    }
    Ok((segs, bdt))
}

/// Launch the run `p` that starts at node `n` (outputs of all its nodes already have storage).
pub(crate) fn run<F: Flavor>(
    be: &mut Cuda<F>,
    graph: &Graph,
    n: usize,
    p: Pattern,
    ptrs: &[Option<CUdeviceptr>],
) -> Result<()> {
    let nodes = &graph.nodes[n..n + p.len()];
    let ptr = |id: ValueId| ops::value_ptr(graph, ptrs, id);
    match p {
        Pattern::Linears { .. } => {
            let x = graph.value(nodes[0].inputs[0]);
            let (t, k) = (dims(x)[0], dims(x)[1]);
            let (segs, bdt) = gemv_segments(graph, nodes, ptrs)?;
            ops::gemv(be, ptr(nodes[0].inputs[0])?, t, k, bdt, &segs)
        }
        Pattern::RouterTopK => {
            let (lin, top) = (&nodes[0], &nodes[1]);
            let Op::TopKSoftmax { k } = top.op else {
                unreachable!("pattern_at matched a TopKSoftmax");
            };
            let x = graph.value(lin.inputs[0]);
            let e = dims(graph.value(lin.inputs[1]))[0];
            let (bias, bdt) = linear_bias(graph, ptrs, lin)?.unwrap_or((0, 0));
            ops::router_topk(
                be,
                ptr(lin.inputs[0])?,
                (ptr(lin.inputs[1])?, bias, bdt),
                (
                    ptr(lin.outputs[0])?,
                    ptr(top.outputs[0])?,
                    ptr(top.outputs[1])?,
                ),
                (dims(x)[0], dims(x)[1], e, k as usize),
            )
        }
        Pattern::RopePair => {
            let (a, b) = (&nodes[0], &nodes[1]);
            let (Op::Rope { params, heads: h0 }, Op::Rope { heads: h1, .. }) = (&a.op, &b.op)
            else {
                unreachable!("pattern_at matched two Rope nodes");
            };
            let t = dims(graph.value(a.inputs[0]))[0];
            ops::rope_pairs(
                be,
                params,
                t,
                [(ptr(a.inputs[0])?, ptr(a.outputs[0])?, *h0)],
                Some((ptr(b.inputs[0])?, ptr(b.outputs[0])?, *h1)),
                ptr(a.inputs[1])?,
            )
        }
        Pattern::RopeAttention => {
            let (a, b, att) = (&nodes[0], &nodes[1], &nodes[2]);
            let Op::Rope { params, .. } = &a.op else {
                unreachable!("pattern_at matched a Rope");
            };
            let Op::Attention {
                heads,
                kv_heads,
                window,
                scale,
                ..
            } = att.op
            else {
                unreachable!("pattern_at matched an Attention");
            };
            let (q_rope, k_rope) = if att.inputs[0] == a.outputs[0] {
                (a, b)
            } else {
                (b, a)
            };
            let table = be.rope_table(params)?;
            let cap = dims(graph.value(att.outputs[1]))[0];
            be.rope_attention_runs += 1;
            let sinks = graph.value(att.inputs[3]);
            ops::attention_split(
                be,
                &ops::SplitAttention {
                    q: ptr(q_rope.inputs[0])?,
                    caches: (ptr(att.outputs[1])?, ptr(att.outputs[2])?),
                    pos: ptr(att.inputs[4])?,
                    sinks: (ptr(att.inputs[3])?, ops::float_code(sinks)?),
                    o: ptr(att.outputs[0])?,
                    shape: (1, heads, kv_heads, window, scale, cap),
                    fresh: Some((ptr(k_rope.inputs[0])?, ptr(att.inputs[2])?)),
                    rope: Some((table, params.attention_scaling())),
                },
            )
        }
        Pattern::AddNormRouter { defer } => {
            let (add, norm, lin, top) = (&nodes[0], &nodes[1], &nodes[2], &nodes[3]);
            let (Op::RmsNorm { eps }, Op::TopKSoftmax { k }) = (&norm.op, &top.op) else {
                unreachable!("pattern_at matched an RmsNorm and a TopKSoftmax");
            };
            let x = graph.value(add.inputs[0]);
            let e = dims(graph.value(lin.inputs[1]))[0];
            let (bias, bdt) = linear_bias(graph, ptrs, lin)?.unwrap_or((0, 0));
            if defer {
                return ops::add_norm_router_logits(
                    be,
                    [ptr(add.inputs[0])?, ptr(add.inputs[1])?],
                    (ptr(add.outputs[0])?, ptr(norm.outputs[0])?),
                    (ptr(norm.inputs[1])?, graph.value(norm.inputs[1]), *eps),
                    (ptr(lin.inputs[1])?, bias, bdt),
                    (ptr(top.outputs[0])?, ptr(top.outputs[1])?),
                    (dims(x)[1], e, *k as usize),
                );
            }
            ops::add_norm_router(
                be,
                [ptr(add.inputs[0])?, ptr(add.inputs[1])?],
                (ptr(add.outputs[0])?, ptr(norm.outputs[0])?),
                (ptr(norm.inputs[1])?, graph.value(norm.inputs[1]), *eps),
                (ptr(lin.inputs[1])?, bias, bdt),
                (
                    ptr(lin.outputs[0])?,
                    ptr(top.outputs[0])?,
                    ptr(top.outputs[1])?,
                ),
                (dims(x)[0], dims(x)[1], e, *k as usize),
            )
        }
        Pattern::AddNorm => {
            let (add, norm) = (&nodes[0], &nodes[1]);
            let Op::RmsNorm { eps } = norm.op else {
                unreachable!("pattern_at matched an RmsNorm");
            };
            let x = graph.value(add.inputs[0]);
            ops::add_rms_norm(
                be,
                (dims(x)[0], dims(x)[1]),
                [ptr(add.inputs[0])?, ptr(add.inputs[1])?],
                ptr(add.outputs[0])?,
                (ptr(norm.inputs[1])?, graph.value(norm.inputs[1])),
                ptr(norm.outputs[0])?,
                eps,
            )
        }
        Pattern::MoeAddNorm { norm } => {
            let (moe, add) = (&nodes[0], &nodes[1]);
            let Op::MoeMxfp4 {
                swiglu_limit,
                alpha,
            } = moe.op
            else {
                unreachable!("pattern_at matched a MoeMxfp4");
            };
            let norm = match norm {
                true => {
                    let nn = &nodes[2];
                    let Op::RmsNorm { eps } = nn.op else {
                        unreachable!("pattern_at matched an RmsNorm");
                    };
                    let w = graph.value(nn.inputs[1]);
                    Some((
                        ptr(nn.inputs[1])?,
                        ops::float_code(w)?,
                        ptr(nn.outputs[0])?,
                        eps,
                    ))
                }
                false => None,
            };
            let tail = MoeTail::AddNorm {
                resid: ptr(add.inputs[0])?,
                sum: ptr(add.outputs[0])?,
                norm,
            };
            ops::run_moe(be, graph, moe, ptrs, (swiglu_limit, alpha), tail)
        }
        Pattern::MoeNormLinears { count } => {
            let (moe, add, nn) = (&nodes[0], &nodes[1], &nodes[2]);
            let (
                Op::MoeMxfp4 {
                    swiglu_limit,
                    alpha,
                },
                Op::RmsNorm { eps },
            ) = (&moe.op, &nn.op)
            else {
                unreachable!("pattern_at matched a MoeMxfp4 and an RmsNorm");
            };
            let (found, bdt) = gemv_segments(graph, &nodes[3..3 + count], ptrs)?;
            let mut segs = [GemvSegment::NONE; 3];
            segs[..count].copy_from_slice(&found);
            let tail = MoeTail::NormLinears {
                resid: ptr(add.inputs[0])?,
                sum: ptr(add.outputs[0])?,
                norm: (
                    ptr(nn.inputs[1])?,
                    ops::float_code(graph.value(nn.inputs[1]))?,
                    *eps,
                ),
                segs,
                bdt,
            };
            ops::run_moe(be, graph, moe, ptrs, (*swiglu_limit, *alpha), tail)
        }
    }
}
