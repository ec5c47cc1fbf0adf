//! Builds the graph of one gpt-oss forward step (GPTOSS-SPEC.md section 4).
//!
//! Intermediates are named per layer (`attn_norm.3`, `resid_ffn.3`, ...) so a dump diffs
//! against transformers' hidden states.

use gptoss_core::graph::{Op, ValueKind};
use gptoss_core::{BufferId, DType, Graph, TensorDesc, ValueId};

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

struct Builder<'a> {
    g: Graph,
    cfg: &'a GptOssConfig,
    t: usize,
}

impl Builder<'_> {
    fn weight(&mut self, name: String, dtype: DType, shape: Vec<usize>, buf: BufferId) -> ValueId {
        self.g
            .add_value(name, TensorDesc::new(dtype, shape), ValueKind::Weight(buf))
    }
    fn temp(&mut self, name: String, shape: Vec<usize>) -> ValueId {
        self.g
            .add_value(name, TensorDesc::new(DType::F32, shape), ValueKind::Temp)
    }
    fn temp_i32(&mut self, name: String, shape: Vec<usize>) -> ValueId {
        self.g
            .add_value(name, TensorDesc::new(DType::I32, shape), ValueKind::Temp)
    }
    fn op(
        &mut self,
        op: Op,
        inputs: Vec<ValueId>,
        out_name: String,
        out_shape: Vec<usize>,
    ) -> ValueId {
        let out = self.temp(out_name, out_shape);
        self.g.push(op, inputs, vec![out]);
        out
    }
    fn rms_norm(&mut self, x: ValueId, w: ValueId, name: String) -> ValueId {
        let eps = self.cfg.rms_norm_eps as f32;
        self.op(
            Op::RmsNorm { eps },
            vec![x, w],
            name,
            vec![self.t, self.cfg.hidden_size],
        )
    }
    /// The sum of `x` over all shards (nothing to do for an unsplit model).
    fn all_reduce(&mut self, x: ValueId, name: String, shard: &ShardPlan) -> ValueId {
        if shard.is_whole() {
            return x;
        }
        let shape = self.g.value(x).desc.shape.dims().to_vec();
        self.op(Op::AllReduceSum, vec![x], name, shape)
    }
    fn linear(
        &mut self,
        x: ValueId,
        w: ValueId,
        b: Option<ValueId>,
        name: String,
        out: usize,
    ) -> ValueId {
        let mut ins = vec![x, w];
        ins.extend(b);
        self.op(Op::Linear, ins, name, vec![self.t, out])
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
        g: Graph::new(),
        cfg,
        t: n_tokens,
    };
    let t = n_tokens;

    let ids = b.g.add_value(
        "ids",
        TensorDesc::new(DType::I32, [t]),
        ValueKind::Input(io.ids),
    );
    let pos = b.g.add_value(
        "positions",
        TensorDesc::new(DType::I32, [t]),
        ValueKind::Input(io.positions),
    );
    let embed = b.weight("model.embed_tokens.weight".into(), f, vec![v, h], w.embed);
    let mut x = b.op(Op::Embed, vec![embed, ids], "embed".into(), vec![t, h]);
    let rope = cfg.rope_params();
    let cache_desc = match kv {
        KvBinding::Contiguous(c) => KvCache::desc_for(cfg, nkv, c.capacity, c.dtype),
        KvBinding::Paged { rows, .. } => KvCache::desc_for(cfg, nkv, *rows, DType::F32),
    };
    // The paged step's slot and page-table inputs, shared by every layer.
    let paged = match kv {
        KvBinding::Paged {
            slots,
            pages,
            max_pages,
            page_size,
            ..
        } => {
            let s = b.g.add_value(
                "slots",
                TensorDesc::new(DType::I32, [t]),
                ValueKind::Input(*slots),
            );
            let p = b.g.add_value(
                "pages",
                TensorDesc::new(DType::I32, [t, *max_pages]),
                ValueKind::Input(*pages),
            );
            Some((s, p, *page_size as u32))
        }
        KvBinding::Contiguous(_) => None,
    };

    for (l, lw) in w.layers.iter().enumerate() {
        let p = format!("model.layers.{l}.");
        let a = format!("{p}self_attn.");
        let xp = format!("{p}mlp.experts.");

        let norm_w = b.weight(
            format!("{p}input_layernorm.weight"),
            f,
            vec![h],
            lw.input_norm,
        );
        let hn = b.rms_norm(x, norm_w, format!("attn_norm.{l}"));
        let q_w = b.weight(format!("{a}q_proj.weight"), f, vec![nq * d, h], lw.q_w);
        let q_b = b.weight(format!("{a}q_proj.bias"), f, vec![nq * d], lw.q_b);
        let k_w = b.weight(format!("{a}k_proj.weight"), f, vec![nkv * d, h], lw.k_w);
        let k_b = b.weight(format!("{a}k_proj.bias"), f, vec![nkv * d], lw.k_b);
        let v_w = b.weight(format!("{a}v_proj.weight"), f, vec![nkv * d, h], lw.v_w);
        let v_b = b.weight(format!("{a}v_proj.bias"), f, vec![nkv * d], lw.v_b);
        let q = b.linear(hn, q_w, Some(q_b), format!("q.{l}"), nq * d);
        let k = b.linear(hn, k_w, Some(k_b), format!("k.{l}"), nkv * d);
        let vv = b.linear(hn, v_w, Some(v_b), format!("v.{l}"), nkv * d);
        let q = b.op(
            Op::Rope {
                params: rope,
                heads: nq as u32,
            },
            vec![q, pos],
            format!("q_rope.{l}"),
            vec![t, nq * d],
        );
        let k = b.op(
            Op::Rope {
                params: rope,
                heads: nkv as u32,
            },
            vec![k, pos],
            format!("k_rope.{l}"),
            vec![t, nkv * d],
        );

        let sinks = b.weight(format!("{a}sinks"), f, vec![nq], lw.sinks);
        let (kc_buf, vc_buf) = match kv {
            KvBinding::Contiguous(c) => c.layers[l],
            KvBinding::Paged { layers, .. } => layers[l],
        };
        let kc = b.g.add_value(
            format!("k_cache.{l}"),
            cache_desc.clone(),
            ValueKind::State(kc_buf),
        );
        let vc = b.g.add_value(
            format!("v_cache.{l}"),
            cache_desc.clone(),
            ValueKind::State(vc_buf),
        );
        let attn = b.temp(format!("attn.{l}"), vec![t, nq * d]);
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
                b.g.push(op, vec![q, k, vv, sinks, pos], vec![attn, kc, vc]);
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
                let ins = vec![q, k, vv, sinks, pos, slots, pages];
                b.g.push(op, ins, vec![attn, kc, vc]);
            }
        }
        let o_w = b.weight(format!("{a}o_proj.weight"), f, vec![h, nq * d], lw.o_w);
        let o_b = b.weight(format!("{a}o_proj.bias"), f, vec![h], lw.o_b);
        let o = b.linear(attn, o_w, Some(o_b), format!("attn_out.{l}"), h);
        let o = b.all_reduce(o, format!("attn_out_sum.{l}"), shard);
        x = b.op(Op::Add, vec![x, o], format!("resid_attn.{l}"), vec![t, h]);

        let post_w = b.weight(
            format!("{p}post_attention_layernorm.weight"),
            f,
            vec![h],
            lw.post_norm,
        );
        let hn = b.rms_norm(x, post_w, format!("ffn_norm.{l}"));
        // The router always sees every expert; the shard then keeps its own.
        let all_e = cfg.num_local_experts;
        let r_w = b.weight(
            format!("{p}mlp.router.weight"),
            f,
            vec![all_e, h],
            lw.router_w,
        );
        let r_b = b.weight(format!("{p}mlp.router.bias"), f, vec![all_e], lw.router_b);
        let router = b.linear(hn, r_w, Some(r_b), format!("router_logits.{l}"), all_e);
        let k_top = cfg.num_experts_per_tok;
        let sel = b.temp_i32(format!("expert_ids.{l}"), vec![t, k_top]);
        let sel_w = b.temp(format!("expert_weights.{l}"), vec![t, k_top]);
        b.g.push(
            Op::TopKSoftmax { k: k_top as u32 },
            vec![router],
            vec![sel, sel_w],
        );
        let sel = if shard.expert_parallel && !shard.is_whole() {
            let local = b.temp_i32(format!("local_expert_ids.{l}"), vec![t, k_top]);
            let op = Op::LocalExperts {
                first: shard.experts.start as u32,
                count: e as u32,
            };
            b.g.push(op, vec![sel], vec![local]);
            local
        } else {
            sel
        };
        let gub = b.weight(
            format!("{xp}gate_up_proj_blocks"),
            DType::Mxfp4Blocks,
            vec![e, 2 * i, h / 32, 16],
            lw.gate_up_blocks,
        );
        let gus = b.weight(
            format!("{xp}gate_up_proj_scales"),
            DType::E8m0Scales,
            vec![e, 2 * i, h / 32],
            lw.gate_up_scales,
        );
        let gbias = b.weight(
            format!("{xp}gate_up_proj_bias"),
            f,
            vec![e, 2 * i],
            lw.gate_up_bias,
        );
        let dnb = b.weight(
            format!("{xp}down_proj_blocks"),
            DType::Mxfp4Blocks,
            vec![e, h, i / 32, 16],
            lw.down_blocks,
        );
        let dns = b.weight(
            format!("{xp}down_proj_scales"),
            DType::E8m0Scales,
            vec![e, h, i / 32],
            lw.down_scales,
        );
        let dbias = b.weight(format!("{xp}down_proj_bias"), f, vec![e, h], lw.down_bias);
        let moe = Op::MoeMxfp4 {
            swiglu_limit: cfg.swiglu_limit as f32,
            alpha: SWIGLU_ALPHA,
        };
        let m = b.op(
            moe,
            vec![hn, sel, sel_w, gub, gus, gbias, dnb, dns, dbias],
            format!("moe_out.{l}"),
            vec![t, h],
        );
        let m = b.all_reduce(m, format!("moe_out_sum.{l}"), shard);
        x = b.op(Op::Add, vec![x, m], format!("resid_ffn.{l}"), vec![t, h]);
    }

    let norm_w = b.weight("model.norm.weight".into(), f, vec![h], w.norm);
    let mut xn = b.rms_norm(x, norm_w, "final_norm".into());
    let rows = match (wanted, io.gather) {
        (LogitsWanted::All, _) => t,
        (_, Some((rows_buf, n))) => {
            let sel = b.g.add_value(
                "last_rows",
                TensorDesc::new(DType::I32, [n]),
                ValueKind::Input(rows_buf),
            );
            xn = b.op(
                Op::GatherRows,
                vec![xn, sel],
                "final_norm.last".into(),
                vec![n, h],
            );
            n
        }
        (LogitsWanted::Last | LogitsWanted::Argmax, None) => {
            xn = b.op(Op::LastRow, vec![xn], "final_norm.last".into(), vec![1, h]);
            1
        }
    };
    let lm = b.weight("lm_head.weight".into(), f, vec![v, h], w.lm_head);
    if wanted == LogitsWanted::Argmax {
        let logits = b.temp("logits".into(), vec![rows, v]);
        b.g.push(Op::Linear, vec![xn, lm], vec![logits]);
        let id = b.g.add_value(
            "argmax",
            TensorDesc::new(DType::I32, [rows]),
            ValueKind::Output(io.logits),
        );
        b.g.push(Op::Argmax, vec![logits], vec![id]);
        return b.g;
    }
    let logits = b.g.add_value(
        "logits",
        TensorDesc::new(DType::F32, [rows, v]),
        ValueKind::Output(io.logits),
    );
    b.g.push(Op::Linear, vec![xn, lm], vec![logits]);
    b.g
}
