//! Shape and dtype rules of each op (used by `Graph::validate`).

use crate::graph::{is_float, Graph, Node, Op};
use crate::DType;

fn desc<'a>(g: &'a Graph, node: &Node, inputs: bool, i: usize) -> (&'a [usize], DType, &'a str) {
    let id = if inputs {
        node.inputs[i]
    } else {
        node.outputs[i]
    };
    let v = g.value(id);
    (v.desc.shape.dims(), v.desc.dtype, v.name.as_str())
}

fn arity(node: &Node, ins: &[usize], outs: usize) -> Result<(), String> {
    if !ins.contains(&node.inputs.len()) || node.outputs.len() != outs {
        return Err(format!(
            "takes {:?} inputs and {outs} outputs, got {} and {}",
            ins,
            node.inputs.len(),
            node.outputs.len()
        ));
    }
    Ok(())
}

fn want(cond: bool, msg: impl FnOnce() -> String) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(msg())
    }
}

pub(crate) fn check_node(g: &Graph, node: &Node) -> Result<(), String> {
    let i = |k: usize| desc(g, node, true, k);
    let o = |k: usize| desc(g, node, false, k);
    let float2 = |k: usize, inputs: bool| {
        let (s, d, n) = desc(g, node, inputs, k);
        want(s.len() == 2 && is_float(d), || {
            format!("'{n}' must be a 2-D float tensor, is {d} {s:?}")
        })
    };
    match &node.op {
        Op::Embed => {
            arity(node, &[2], 1)?;
            float2(0, true)?;
            let (ids, dt, n) = i(1);
            want(ids.len() == 1 && dt == DType::I32, || {
                format!("ids '{n}' must be I32 [T]")
            })?;
            want(o(0).0 == [ids[0], i(0).0[1]], || {
                format!("output must be [{}, {}]", ids[0], i(0).0[1])
            })
        }
        Op::RmsNorm { .. } => {
            arity(node, &[2], 1)?;
            float2(0, true)?;
            want(i(1).0 == [i(0).0[1]], || {
                format!(
                    "weight '{}' must be [{}], is {:?}",
                    i(1).2,
                    i(0).0[1],
                    i(1).0
                )
            })?;
            want(o(0).0 == i(0).0, || "output shape must equal input".into())
        }
        Op::Linear => {
            arity(node, &[2, 3], 1)?;
            float2(0, true)?;
            float2(1, true)?;
            let (x, w) = (i(0).0, i(1).0);
            want(x[1] == w[1], || {
                format!(
                    "x '{}' {:?} does not fit weight '{}' {:?} ([out, in])",
                    i(0).2,
                    x,
                    i(1).2,
                    w
                )
            })?;
            if node.inputs.len() == 3 {
                want(i(2).0 == [w[0]], || {
                    format!("bias '{}' must be [{}], is {:?}", i(2).2, w[0], i(2).0)
                })?;
            }
            want(o(0).0 == [x[0], w[0]], || {
                format!("output must be [{}, {}]", x[0], w[0])
            })
        }
        Op::Rope { params, heads } => {
            arity(node, &[2], 1)?;
            float2(0, true)?;
            let x = i(0).0;
            want(x[1] == (*heads * params.head_dim) as usize, || {
                format!(
                    "x width {} != heads {heads} * head_dim {}",
                    x[1], params.head_dim
                )
            })?;
            want(params.head_dim % 2 == 0, || "head_dim must be even".into())?;
            want(i(1).0 == [x[0]] && i(1).1 == DType::I32, || {
                "positions must be I32 [T]".into()
            })?;
            want(o(0).0 == x, || "output shape must equal input".into())
        }
        Op::Attention {
            heads,
            kv_heads,
            head_dim,
            ..
        } => {
            arity(node, &[5], 3)?;
            attention_io(g, node, *heads, *kv_heads, *head_dim)
        }
        Op::PagedAttention {
            heads,
            kv_heads,
            head_dim,
            page_size,
            ..
        } => {
            arity(node, &[7], 3)?;
            attention_io(g, node, *heads, *kv_heads, *head_dim)?;
            let t = i(0).0[0];
            want(i(5).0 == [t] && i(5).1 == DType::I32, || {
                "slots must be I32 [T]".into()
            })?;
            let (pages, pdt, _) = i(6);
            want(
                pages.len() == 2 && pages[0] == t && pdt == DType::I32,
                || format!("page table must be I32 [{t}, pages], is {pdt} {pages:?}"),
            )?;
            let rows = o(1).0[0];
            want(*page_size > 0 && rows % *page_size as usize == 0, || {
                format!("pool rows {rows} must be a multiple of page_size {page_size}")
            })
        }
        Op::GatherRows => {
            arity(node, &[2], 1)?;
            float2(0, true)?;
            let (rows, dt, n) = i(1);
            want(rows.len() == 1 && dt == DType::I32, || {
                format!("rows '{n}' must be I32 [B]")
            })?;
            want(o(0).0 == [rows[0], i(0).0[1]], || {
                format!("output must be [{}, {}]", rows[0], i(0).0[1])
            })
        }
        Op::TopKSoftmax { k } => {
            arity(node, &[1], 2)?;
            float2(0, true)?;
            let x = i(0).0;
            want(*k as usize <= x[1] && *k > 0, || {
                format!("k = {k} must be in 1..={}", x[1])
            })?;
            want(
                o(0).0 == [x[0], *k as usize] && o(0).1 == DType::I32,
                || "ids must be I32 [T, k]".into(),
            )?;
            want(o(1).0 == [x[0], *k as usize], || {
                "weights must be [T, k]".into()
            })
        }
        Op::MoeMxfp4 { .. } => {
            arity(node, &[9], 1)?;
            float2(0, true)?;
            let (x, (gub, gbt, _), (dnb, dbt, _)) = (i(0).0, i(3), i(6));
            want(
                gbt == DType::Mxfp4Blocks && dbt == DType::Mxfp4Blocks,
                || "expert blocks must be MXFP4 blocks".into(),
            )?;
            want(
                gub.len() == 4 && dnb.len() == 4 && gub[3] == 16 && dnb[3] == 16,
                || "expert blocks must be [E, rows, groups, 16]".into(),
            )?;
            let (e, two_i, h) = (gub[0], gub[1], x[1]);
            want(gub[2] * 32 == h, || {
                format!("gate_up blocks cover {} inputs, hidden is {h}", gub[2] * 32)
            })?;
            want(
                two_i % 2 == 0 && dnb[0] == e && dnb[1] == h && dnb[2] * 32 * 2 == two_i,
                || format!("down blocks {dnb:?} do not fit gate_up blocks {gub:?}"),
            )?;
            want(
                i(4).0 == [e, two_i, gub[2]] && i(7).0 == [e, h, dnb[2]],
                || "scales must be blocks without the last axis".into(),
            )?;
            want(i(5).0 == [e, two_i] && i(8).0 == [e, h], || {
                "expert biases must be [E, 2I] and [E, H]".into()
            })?;
            want(
                i(1).0 == i(2).0 && i(1).0[0] == x[0] && i(1).1 == DType::I32,
                || "ids (I32) and weights must be [T, k]".into(),
            )?;
            want(o(0).0 == x, || "output shape must equal x".into())
        }
        Op::LocalExperts { count, .. } => {
            arity(node, &[1], 1)?;
            let (ids, dt, n) = i(0);
            want(ids.len() == 2 && dt == DType::I32, || {
                format!("ids '{n}' must be I32 [T, k]")
            })?;
            want(*count > 0, || "count must be at least 1".into())?;
            want(o(0).0 == ids && o(0).1 == DType::I32, || {
                "output must be I32 of the input's shape".into()
            })
        }
        Op::AllReduceSum => {
            arity(node, &[1], 1)?;
            float2(0, true)?;
            want(o(0).0 == i(0).0 && o(0).1 == DType::F32, || {
                "output must be F32 of the input's shape".into()
            })
        }
        Op::Add => {
            arity(node, &[2], 1)?;
            want(i(0).0 == i(1).0 && o(0).0 == i(0).0, || {
                format!("shapes differ: {:?} + {:?}", i(0).0, i(1).0)
            })
        }
        Op::LastRow => {
            arity(node, &[1], 1)?;
            float2(0, true)?;
            want(i(0).0[0] > 0 && o(0).0 == [1, i(0).0[1]], || {
                "output must be [1, N] of a non-empty input".into()
            })
        }
        Op::Argmax => {
            arity(node, &[1], 1)?;
            float2(0, true)?;
            want(o(0).0 == [i(0).0[0]] && o(0).1 == DType::I32, || {
                "output must be I32 [T]".into()
            })
        }
    }
}

/// q, k, v, sinks, positions and the output/caches shared by both attention ops.
fn attention_io(
    g: &Graph,
    node: &Node,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
) -> Result<(), String> {
    let i = |k: usize| desc(g, node, true, k);
    let o = |k: usize| desc(g, node, false, k);
    let t = i(0).0[0];
    let (nq, nkv, d) = (heads as usize, kv_heads as usize, head_dim as usize);
    want(nkv > 0 && nq % nkv == 0, || {
        format!("heads {nq} must be a multiple of kv_heads {nkv}")
    })?;
    want(i(0).0 == [t, nq * d], || {
        format!("q must be [{t}, {}], is {:?}", nq * d, i(0).0)
    })?;
    want(i(1).0 == [t, nkv * d] && i(2).0 == [t, nkv * d], || {
        format!("k and v must be [{t}, {}]", nkv * d)
    })?;
    want(i(3).0 == [nq], || {
        format!("sinks must be [{nq}], is {:?}", i(3).0)
    })?;
    want(i(4).0 == [t] && i(4).1 == DType::I32, || {
        "positions must be I32 [T]".into()
    })?;
    want(o(0).0 == [t, nq * d], || {
        "output must be shaped like q".into()
    })?;
    for c in 1..3 {
        let (s, _, n) = o(c);
        want(s.len() == 2 && s[1] == nkv * d, || {
            format!("cache '{n}' must be [capacity, {}], is {s:?}", nkv * d)
        })?;
    }
    Ok(())
}
