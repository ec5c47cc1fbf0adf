//! Builds the graph of one gpt-oss forward step (GPTOSS-SPEC.md section 4).
//!
//! Intermediates are named per layer (`attn_norm.3`, `resid_ffn.3`, ...) so a dump diffs
//! against transformers' hidden states.

use std::fmt::{Arguments, Write};

use gptoss_core::graph::{Node, Op, ValueKind};
use gptoss_core::{BufferId, DType, Graph, Shape, TensorDesc, Value, ValueId};

use crate::config::{GptOssConfig, SWIGLU_ALPHA};
use crate::kv_cache::KvCache;
use crate::sharding::ShardPlan;
use crate::weights::ModelWeights;

/// Which logits the step produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsWanted {
    /// `[T, V]`: every position (prefill checks, `gptoss logits`).
    All,
    /// `[1, V]`: the last position only (generation).
    Last,
    /// `[1]` I32: the argmax of the last position's logits (first on ties), computed by the
    /// backend, so greedy decoding downloads 4 bytes instead of V floats.
    Argmax,
}

/// Buffers the host binds for one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepIo {
    pub ids: BufferId,       // [T] I32
    pub positions: BufferId, // [T] I32
    /// [T or 1, V] F32, or [1] I32 for LogitsWanted::Argmax; [B, V] / [B] with `gather`.
    pub logits: BufferId,
    /// `(rows [B] I32, B)`: the rows whose logits `Last`/`Argmax` produce (each sequence's
    /// last token in a batched step) instead of the last row alone.
    pub gather: Option<(BufferId, usize)>,
}

/// Where the step's keys and values live.
pub enum KvBinding<'a> {
    /// One sequence's contiguous caches; row = position.
    Contiguous(&'a KvCache),
    /// Pools shared by the step's sequences (`PagedAttention`): this shard's `(k, v)` pool
    /// per layer of `rows` rows, and the step's slot [T] and page-table [T, max_pages] inputs.
    Paged {
        layers: &'a [(BufferId, BufferId)],
        rows: usize,
        page_size: usize,
        slots: BufferId,
        pages: BufferId,
        max_pages: usize,
    },
}

/// Writes a graph over an existing one, value by value and node by node, reusing every
/// allocation (names, shapes, id lists) of what was there; `finish` drops what is left over.
struct Builder<'a> {
    g: &'a mut Graph,
    /// Values and nodes written so far.
    nv: usize,
    nn: usize,
    cfg: &'a GptOssConfig,
    t: usize,
}

impl Builder<'_> {
    fn value(
        &mut self,
        name: Arguments,
        dtype: DType,
        shape: &[usize],
        kind: ValueKind,
    ) -> ValueId {
        let id = self.nv;
        self.nv += 1;
        if id == self.g.values.len() {
            self.g.values.push(Value {
                name: std::fmt::format(name),
                desc: TensorDesc {
                    dtype,
                    shape: Shape(shape.to_vec()),
                },
                kind,
            });
            return ValueId(id as u32);
        }
        let v = &mut self.g.values[id];
        v.name.clear();
        v.name.write_fmt(name).expect("writing to a String");
        v.desc.dtype = dtype;
        v.desc.shape.0.clear();
        v.desc.shape.0.extend_from_slice(shape);
        v.kind = kind;
        ValueId(id as u32)
    }
    fn push(&mut self, op: Op, inputs: &[ValueId], outputs: &[ValueId]) {
        let n = self.nn;
        self.nn += 1;
        if n == self.g.nodes.len() {
            self.g.nodes.push(Node {
                op,
                inputs: inputs.to_vec(),
                outputs: outputs.to_vec(),
            });
            return;
        }
        let node = &mut self.g.nodes[n];
        node.op = op;
        node.inputs.clear();
        node.inputs.extend_from_slice(inputs);
        node.outputs.clear();
        node.outputs.extend_from_slice(outputs);
    }
    fn finish(self) {
        self.g.values.truncate(self.nv);
        self.g.nodes.truncate(self.nn);
    }
    fn weight(&mut self, name: Arguments, dtype: DType, shape: &[usize], buf: BufferId) -> ValueId {
        self.value(name, dtype, shape, ValueKind::Weight(buf))
    }
    /// A linear layer's `{prefix}.weight` [rows, cols] and `{prefix}.bias` [rows].
    fn linear_weights(
        &mut self,
        prefix: Arguments,
        dtype: DType,
        [rows, cols]: [usize; 2],
        (w, b): (BufferId, BufferId),
    ) -> (ValueId, ValueId) {
        let w = self.weight(format_args!("{prefix}.weight"), dtype, &[rows, cols], w);
        let b = self.weight(format_args!("{prefix}.bias"), dtype, &[rows], b);
        (w, b)
    }
    fn temp(&mut self, name: Arguments, shape: &[usize]) -> ValueId {
        self.value(name, DType::F32, shape, ValueKind::Temp)
    }
    fn temp_i32(&mut self, name: Arguments, shape: &[usize]) -> ValueId {
        self.value(name, DType::I32, shape, ValueKind::Temp)
    }
    fn op(
        &mut self,
        op: Op,
        inputs: &[ValueId],
        out_name: Arguments,
        out_shape: &[usize],
    ) -> ValueId {
        let out = self.temp(out_name, out_shape);
        self.push(op, inputs, &[out]);
        out
    }
    fn rms_norm(&mut self, x: ValueId, w: ValueId, name: Arguments) -> ValueId {
        let eps = self.cfg.rms_norm_eps as f32;
        let shape = [self.t, self.cfg.hidden_size];
        self.op(Op::RmsNorm { eps }, &[x, w], name, &shape)
    }
    /// The sum of `x` over all shards (nothing to do for an unsplit model).
    fn all_reduce(&mut self, x: ValueId, name: Arguments, shard: &ShardPlan) -> ValueId {
        if shard.is_whole() {
            return x;
        }
        let d = self.g.value(x).desc.shape.dims();
        let shape = [d[0], d[1]];
        self.op(Op::AllReduceSum, &[x], name, &shape)
    }
    fn linear(
        &mut self,
        x: ValueId,
        w: ValueId,
        b: ValueId,
        name: Arguments,
        out: usize,
    ) -> ValueId {
        let shape = [self.t, out];
        self.op(Op::Linear, &[x, w, b], name, &shape)
    }
}

/// The graph of one step over `n_tokens` new tokens, reading and extending `cache`, for the
/// shard `shard` of the model (`ShardPlan::whole` when it is not split).
pub fn build_step(
    cfg: &GptOssConfig,
    shard: &ShardPlan,
    w: &ModelWeights,
    kv: &KvBinding,
    n_tokens: usize,
    io: StepIo,
    wanted: LogitsWanted,
) -> Graph {
    let mut g = Graph::new();
    build_step_into(&mut g, cfg, shard, w, kv, n_tokens, io, wanted);
    g
}

/// [`build_step`] written over `g` (a graph built earlier, or empty), reusing its
/// allocations: a caller that builds a step per token keeps one graph and allocates next to
/// nothing once it has grown. `g` ends up equal to what `build_step` returns.
#[allow(clippy::too_many_arguments)]
pub fn build_step_into(
    g: &mut Graph,
    cfg: &GptOssConfig,
    shard: &ShardPlan,
    w: &ModelWeights,
    kv: &KvBinding,
    n_tokens: usize,
    io: StepIo,
    wanted: LogitsWanted,
) {
    // This shard's part: heads, experts, intermediate columns (all of them when whole).
    let (h, v, e, i) = (
        cfg.hidden_size,
        cfg.vocab_size,
        shard.experts.len(),
        shard.intermediate(),
    );
    let (nq, nkv, d) = (shard.heads.len(), shard.kv_heads.len(), cfg.head_dim);
    let f = w.float_dtype;
    let mut b = Builder {
        g,
        nv: 0,
        nn: 0,
        cfg,
        t: n_tokens,
    };
    let t = n_tokens;
    let i32_ = DType::I32;

    let ids = b.value(format_args!("ids"), i32_, &[t], ValueKind::Input(io.ids));
    let pos = b.value(
        format_args!("positions"),
        i32_,
        &[t],
        ValueKind::Input(io.positions),
    );
    let embed = b.weight(
        format_args!("model.embed_tokens.weight"),
        f,
        &[v, h],
        w.embed,
    );
    let mut x = b.op(Op::Embed, &[embed, ids], format_args!("embed"), &[t, h]);
    let rope = cfg.rope_params();
    let cache_desc = match kv {
        KvBinding::Contiguous(c) => KvCache::desc_for(cfg, nkv, c.capacity, c.dtype),
        KvBinding::Paged { rows, .. } => KvCache::desc_for(cfg, nkv, *rows, DType::F32),
    };
    let (cache_dtype, cache_shape) = (cache_desc.dtype, cache_desc.shape.dims());
    // The paged step's slot and page-table inputs, shared by every layer.
    let paged = match kv {
        KvBinding::Paged {
            slots,
            pages,
            max_pages,
            page_size,
            ..
        } => {
            let s = b.value(format_args!("slots"), i32_, &[t], ValueKind::Input(*slots));
            let p = b.value(
                format_args!("pages"),
                i32_,
                &[t, *max_pages],
                ValueKind::Input(*pages),
            );
            Some((s, p, *page_size as u32))
        }
        KvBinding::Contiguous(_) => None,
    };

    for (l, lw) in w.layers.iter().enumerate() {
        let norm_w = b.weight(
            format_args!("model.layers.{l}.input_layernorm.weight"),
            f,
            &[h],
            lw.input_norm,
        );
        let hn = b.rms_norm(x, norm_w, format_args!("attn_norm.{l}"));
        let (q_w, q_b) = b.linear_weights(
            format_args!("model.layers.{l}.self_attn.q_proj"),
            f,
            [nq * d, h],
            (lw.q_w, lw.q_b),
        );
        let (k_w, k_b) = b.linear_weights(
            format_args!("model.layers.{l}.self_attn.k_proj"),
            f,
            [nkv * d, h],
            (lw.k_w, lw.k_b),
        );
        let (v_w, v_b) = b.linear_weights(
            format_args!("model.layers.{l}.self_attn.v_proj"),
            f,
            [nkv * d, h],
            (lw.v_w, lw.v_b),
        );
        let q = b.linear(hn, q_w, q_b, format_args!("q.{l}"), nq * d);
        let k = b.linear(hn, k_w, k_b, format_args!("k.{l}"), nkv * d);
        let vv = b.linear(hn, v_w, v_b, format_args!("v.{l}"), nkv * d);
        let q = b.op(
            Op::Rope {
                params: rope,
                heads: nq as u32,
            },
            &[q, pos],
            format_args!("q_rope.{l}"),
            &[t, nq * d],
        );
        let k = b.op(
            Op::Rope {
                params: rope,
                heads: nkv as u32,
            },
            &[k, pos],
            format_args!("k_rope.{l}"),
            &[t, nkv * d],
        );

        let sinks = b.weight(
            format_args!("model.layers.{l}.self_attn.sinks"),
            f,
            &[nq],
            lw.sinks,
        );
        let (kc_buf, vc_buf) = match kv {
            KvBinding::Contiguous(c) => c.layers[l],
            KvBinding::Paged { layers, .. } => layers[l],
        };
        let kc = b.value(
            format_args!("k_cache.{l}"),
            cache_dtype,
            cache_shape,
            ValueKind::State(kc_buf),
        );
        let vc = b.value(
            format_args!("v_cache.{l}"),
            cache_dtype,
            cache_shape,
            ValueKind::State(vc_buf),
        );
        let attn = b.temp(format_args!("attn.{l}"), &[t, nq * d]);
        let (heads, kv_heads, head_dim) = (nq as u32, nkv as u32, d as u32);
        let (window, scale) = (cfg.layer_window(l), cfg.attention_scale());
        match paged {
            None => {
                let op = Op::Attention {
                    heads,
                    kv_heads,
                    head_dim,
                    window,
                    scale,
                };
                b.push(op, &[q, k, vv, sinks, pos], &[attn, kc, vc]);
            }
            Some((slots, pages, page_size)) => {
                let op = Op::PagedAttention {
                    heads,
                    kv_heads,
                    head_dim,
                    window,
                    scale,
                    page_size,
                };
                b.push(op, &[q, k, vv, sinks, pos, slots, pages], &[attn, kc, vc]);
            }
        }
        let (o_w, o_b) = b.linear_weights(
            format_args!("model.layers.{l}.self_attn.o_proj"),
            f,
            [h, nq * d],
            (lw.o_w, lw.o_b),
        );
        let o = b.linear(attn, o_w, o_b, format_args!("attn_out.{l}"), h);
        let o = b.all_reduce(o, format_args!("attn_out_sum.{l}"), shard);
        x = b.op(Op::Add, &[x, o], format_args!("resid_attn.{l}"), &[t, h]);

        let post_w = b.weight(
            format_args!("model.layers.{l}.post_attention_layernorm.weight"),
            f,
            &[h],
            lw.post_norm,
        );
        let hn = b.rms_norm(x, post_w, format_args!("ffn_norm.{l}"));
        // The router always sees every expert; the shard then keeps its own.
        let all_e = cfg.num_local_experts;
        let (r_w, r_b) = b.linear_weights(
            format_args!("model.layers.{l}.mlp.router"),
            f,
            [all_e, h],
            (lw.router_w, lw.router_b),
        );
        let router = b.linear(hn, r_w, r_b, format_args!("router_logits.{l}"), all_e);
        let k_top = cfg.num_experts_per_tok;
        let sel = b.temp_i32(format_args!("expert_ids.{l}"), &[t, k_top]);
        let sel_w = b.temp(format_args!("expert_weights.{l}"), &[t, k_top]);
        b.push(
            Op::TopKSoftmax { k: k_top as u32 },
            &[router],
            &[sel, sel_w],
        );
        let sel = if shard.expert_parallel && !shard.is_whole() {
            let local = b.temp_i32(format_args!("local_expert_ids.{l}"), &[t, k_top]);
            let op = Op::LocalExperts {
                first: shard.experts.start as u32,
                count: e as u32,
            };
            b.push(op, &[sel], &[local]);
            local
        } else {
            sel
        };
        let gub = b.weight(
            format_args!("model.layers.{l}.mlp.experts.gate_up_proj_blocks"),
            DType::Mxfp4Blocks,
            &[e, 2 * i, h / 32, 16],
            lw.gate_up_blocks,
        );
        let gus = b.weight(
            format_args!("model.layers.{l}.mlp.experts.gate_up_proj_scales"),
            DType::E8m0Scales,
            &[e, 2 * i, h / 32],
            lw.gate_up_scales,
        );
        let gbias = b.weight(
            format_args!("model.layers.{l}.mlp.experts.gate_up_proj_bias"),
            f,
            &[e, 2 * i],
            lw.gate_up_bias,
        );
        let dnb = b.weight(
            format_args!("model.layers.{l}.mlp.experts.down_proj_blocks"),
            DType::Mxfp4Blocks,
            &[e, h, i / 32, 16],
            lw.down_blocks,
        );
        let dns = b.weight(
            format_args!("model.layers.{l}.mlp.experts.down_proj_scales"),
            DType::E8m0Scales,
            &[e, h, i / 32],
            lw.down_scales,
        );
        let dbias = b.weight(
            format_args!("model.layers.{l}.mlp.experts.down_proj_bias"),
            f,
            &[e, h],
            lw.down_bias,
        );
        let moe = Op::MoeMxfp4 {
            swiglu_limit: cfg.swiglu_limit as f32,
            alpha: SWIGLU_ALPHA,
        };
        let m = b.op(
            moe,
            &[hn, sel, sel_w, gub, gus, gbias, dnb, dns, dbias],
            format_args!("moe_out.{l}"),
            &[t, h],
        );
        let m = b.all_reduce(m, format_args!("moe_out_sum.{l}"), shard);
        x = b.op(Op::Add, &[x, m], format_args!("resid_ffn.{l}"), &[t, h]);
    }

    let norm_w = b.weight(format_args!("model.norm.weight"), f, &[h], w.norm);
    let mut xn = b.rms_norm(x, norm_w, format_args!("final_norm"));
    let rows = match (wanted, io.gather) {
        (LogitsWanted::All, _) => t,
        (_, Some((rows_buf, n))) => {
            let sel = b.value(
                format_args!("last_rows"),
                i32_,
                &[n],
                ValueKind::Input(rows_buf),
            );
            xn = b.op(
                Op::GatherRows,
                &[xn, sel],
                format_args!("final_norm.last"),
                &[n, h],
            );
            n
        }
        (LogitsWanted::Last | LogitsWanted::Argmax, None) => {
            xn = b.op(Op::LastRow, &[xn], format_args!("final_norm.last"), &[1, h]);
            1
        }
    };
    let lm = b.weight(format_args!("lm_head.weight"), f, &[v, h], w.lm_head);
    if wanted == LogitsWanted::Argmax {
        let logits = b.temp(format_args!("logits"), &[rows, v]);
        b.push(Op::Linear, &[xn, lm], &[logits]);
        let id = b.value(
            format_args!("argmax"),
            i32_,
            &[rows],
            ValueKind::Output(io.logits),
        );
        b.push(Op::Argmax, &[logits], &[id]);
    } else {
        let logits = b.value(
            format_args!("logits"),
            DType::F32,
            &[rows, v],
            ValueKind::Output(io.logits),
        );
        b.push(Op::Linear, &[xn, lm], &[logits]);
    }
    b.finish();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sharding::Sharding;
    use crate::synthetic::Preset;

    #[test]
    fn building_over_another_graph_equals_a_fresh_build() {
        let cfg = Preset::Tiny.config(None);
        let mut n = 0u64;
        let id = || {
            n += 1;
            BufferId(n)
        };
        let w = ModelWeights::from_ids(cfg.num_hidden_layers, id, DType::BF16);
        let pools: Vec<_> = (0..cfg.num_hidden_layers as u64)
            .map(|l| (BufferId(2000 + 2 * l), BufferId(2001 + 2 * l)))
            .collect();
        let cache = KvCache {
            layers: pools.clone(),
            capacity: 40,
            dtype: DType::F32,
            kv_heads: cfg.num_key_value_heads,
        };
        let paged = KvBinding::Paged {
            layers: &pools,
            rows: 64,
            page_size: 16,
            slots: BufferId(3000),
            pages: BufferId(3001),
            max_pages: 4,
        };
        let io = |n: u64, gather| StepIo {
            ids: BufferId(4000 + n),
            positions: BufferId(4100 + n),
            logits: BufferId(4200 + n),
            gather,
        };
        let whole = ShardPlan::whole(&cfg);
        let ep = Sharding {
            world: 2,
            expert_parallel: true,
        }
        .plans(&cfg)
        .unwrap();
        let steps = [
            (
                &whole,
                &paged,
                7,
                io(0, Some((BufferId(5000), 2))),
                LogitsWanted::Argmax,
            ),
            (
                &whole,
                &KvBinding::Contiguous(&cache),
                1,
                io(1, None),
                LogitsWanted::Argmax,
            ),
            (
                &ep[1],
                &KvBinding::Contiguous(&cache),
                3,
                io(2, None),
                LogitsWanted::All,
            ),
            (
                &whole,
                &paged,
                2,
                io(3, Some((BufferId(5001), 1))),
                LogitsWanted::Last,
            ),
            (
                &whole,
                &KvBinding::Contiguous(&cache),
                1,
                io(4, None),
                LogitsWanted::Last,
            ),
        ];
        let mut g = Graph::new();
        for (plan, kv, t, io, wanted) in steps {
            build_step_into(&mut g, &cfg, plan, &w, kv, t, io, wanted);
            assert_eq!(g, build_step(&cfg, plan, &w, kv, t, io, wanted));
            g.validate().unwrap();
        }
    }
}
