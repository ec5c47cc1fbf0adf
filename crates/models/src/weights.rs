//! The model's weights as backend buffers, loaded from a checkpoint by their published names.

use std::borrow::Cow;

use gptoss_core::{Backend, BufferId, DType, Error, Result};

use crate::checkpoint::Checkpoint;
use crate::config::GptOssConfig;
use crate::sharding::{Cut, ShardPlan};

/// Buffers of one decoder layer. Shapes for gpt-oss-20b in comments.
#[derive(Debug, Clone)]
pub struct LayerWeights {
    pub input_norm: BufferId,     // [H] f32/bf16
    pub q_w: BufferId,            // [NQ*D, H]
    pub q_b: BufferId,            // [NQ*D]
    pub k_w: BufferId,            // [NKV*D, H]
    pub k_b: BufferId,            // [NKV*D]
    pub v_w: BufferId,            // [NKV*D, H]
    pub v_b: BufferId,            // [NKV*D]
    pub o_w: BufferId,            // [H, NQ*D]
    pub o_b: BufferId,            // [H]
    pub sinks: BufferId,          // [NQ]
    pub post_norm: BufferId,      // [H]
    pub router_w: BufferId,       // [E, H]
    pub router_b: BufferId,       // [E]
    pub gate_up_blocks: BufferId, // [E, 2I, H/32, 16] MXFP4
    pub gate_up_scales: BufferId, // [E, 2I, H/32] E8M0
    pub gate_up_bias: BufferId,   // [E, 2I]
    pub down_blocks: BufferId,    // [E, H, I/32, 16] MXFP4
    pub down_scales: BufferId,    // [E, H, I/32] E8M0
    pub down_bias: BufferId,      // [E, H]
}

#[derive(Debug, Clone)]
pub struct ModelWeights {
    pub embed: BufferId, // [V, H]
    pub layers: Vec<LayerWeights>,
    pub norm: BufferId,    // [H]
    pub lm_head: BufferId, // [V, H]
    /// Float dtype each float tensor was stored in (BF16 in the published checkpoints).
    pub float_dtype: DType,
}

/// One tensor a shard needs: its published name, dtype and shape, and how the shard's part
/// (`shape`) is cut from it.
#[derive(Debug, Clone, PartialEq)]
pub struct Need {
    pub name: String,
    pub dtype: DType,
    /// The shard's shape (the published one when the model is not split).
    pub shape: Vec<usize>,
    /// The published shape, as the checkpoint holds it.
    pub full: Vec<usize>,
    pub cut: Cut,
}

impl Need {
    /// The shard's part of the published bytes.
    pub fn cut_bytes<'a>(&self, published: &'a [u8]) -> Cow<'a, [u8]> {
        self.cut.apply(&self.full, self.dtype.size(), published)
    }

    pub fn bytes(&self) -> u64 {
        (self.shape.iter().product::<usize>() * self.dtype.size()) as u64
    }
}

/// Every tensor of a gpt-oss model in load order, float tensors in `float` dtype.
pub fn needs(cfg: &GptOssConfig, float: DType) -> Vec<Need> {
    shard_needs(cfg, &ShardPlan::whole(cfg), float)
}

/// Every tensor one shard holds, in load order (see [`crate::sharding`] for the split).
pub fn shard_needs(cfg: &GptOssConfig, plan: &ShardPlan, float: DType) -> Vec<Need> {
    let (h, i, e, v, d) = (
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.num_local_experts,
        cfg.vocab_size,
        cfg.head_dim,
    );
    let (q, kv) = (cfg.num_attention_heads * d, cfg.num_key_value_heads * d);
    let whole = plan.is_whole();
    let slice = |dim: usize, r: &std::ops::Range<usize>, unit: usize| {
        if whole {
            Cut::Whole
        } else {
            Cut::Slice {
                dim,
                start: r.start * unit,
                len: r.len() * unit,
            }
        }
    };
    // A bias summed across shards is held once.
    let once = if plan.rank == 0 {
        Cut::Whole
    } else {
        Cut::Zero
    };
    let (heads, kvh) = (&plan.heads, &plan.kv_heads);
    // Experts: by expert (axis 0) or by intermediate blocks (rows of gate_up, axis 1, two per
    // column; blocks of down, axis 2).
    let (gate_up, down, down_bias) = if plan.expert_parallel {
        let c = slice(0, &plan.experts, 1);
        (c.clone(), c.clone(), c)
    } else {
        (
            slice(1, &plan.inter_blocks, 64),
            slice(2, &plan.inter_blocks, 1),
            once.clone(),
        )
    };
    let n = |name: String, dtype: DType, full: Vec<usize>, cut: Cut| Need {
        name,
        dtype,
        shape: cut.shape(&full),
        full,
        cut,
    };
    let mut out = vec![n(
        "model.embed_tokens.weight".into(),
        float,
        vec![v, h],
        Cut::Whole,
    )];
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}.");
        let a = format!("{p}self_attn.");
        let x = format!("{p}mlp.experts.");
        out.extend([
            n(
                format!("{p}input_layernorm.weight"),
                float,
                vec![h],
                Cut::Whole,
            ),
            n(
                format!("{a}q_proj.weight"),
                float,
                vec![q, h],
                slice(0, heads, d),
            ),
            n(
                format!("{a}q_proj.bias"),
                float,
                vec![q],
                slice(0, heads, d),
            ),
            n(
                format!("{a}k_proj.weight"),
                float,
                vec![kv, h],
                slice(0, kvh, d),
            ),
            n(format!("{a}k_proj.bias"), float, vec![kv], slice(0, kvh, d)),
            n(
                format!("{a}v_proj.weight"),
                float,
                vec![kv, h],
                slice(0, kvh, d),
            ),
            n(format!("{a}v_proj.bias"), float, vec![kv], slice(0, kvh, d)),
            n(
                format!("{a}o_proj.weight"),
                float,
                vec![h, q],
                slice(1, heads, d),
            ),
            n(format!("{a}o_proj.bias"), float, vec![h], once.clone()),
            n(
                format!("{a}sinks"),
                float,
                vec![cfg.num_attention_heads],
                slice(0, heads, 1),
            ),
            n(
                format!("{p}post_attention_layernorm.weight"),
                float,
                vec![h],
                Cut::Whole,
            ),
            n(
                format!("{p}mlp.router.weight"),
                float,
                vec![e, h],
                Cut::Whole,
            ),
            n(format!("{p}mlp.router.bias"), float, vec![e], Cut::Whole),
            n(
                format!("{x}gate_up_proj_blocks"),
                DType::Mxfp4Blocks,
                vec![e, 2 * i, h / 32, 16],
                gate_up.clone(),
            ),
            n(
                format!("{x}gate_up_proj_scales"),
                DType::E8m0Scales,
                vec![e, 2 * i, h / 32],
                gate_up.clone(),
            ),
            n(
                format!("{x}gate_up_proj_bias"),
                float,
                vec![e, 2 * i],
                gate_up.clone(),
            ),
            n(
                format!("{x}down_proj_blocks"),
                DType::Mxfp4Blocks,
                vec![e, h, i / 32, 16],
                down.clone(),
            ),
            n(
                format!("{x}down_proj_scales"),
                DType::E8m0Scales,
                vec![e, h, i / 32],
                down.clone(),
            ),
            n(
                format!("{x}down_proj_bias"),
                float,
                vec![e, h],
                down_bias.clone(),
            ),
        ]);
    }
    out.push(n("model.norm.weight".into(), float, vec![h], Cut::Whole));
    out.push(n("lm_head.weight".into(), float, vec![v, h], Cut::Whole));
    out
}

impl ModelWeights {
    /// Check every tensor of a checkpoint against the config, then upload each to the backend.
    /// `progress(done_bytes, total_bytes)` is called after each tensor.
    pub fn load(
        cfg: &GptOssConfig,
        plan: &ShardPlan,
        ckpt: &Checkpoint,
        backend: &mut dyn Backend,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<ModelWeights> {
        if ckpt.contains("model.layers.0.mlp.experts.gate_up_proj") {
            return Err(Error::format(
                ckpt.dir(),
                "this checkpoint stores the experts dequantized (mlp.experts.gate_up_proj); \
                 gptoss loads the published MXFP4 layout (gate_up_proj_blocks/_scales)",
            ));
        }
        // Float tensors are BF16 in the published checkpoints; accept F32/F16 consistently.
        let float = ckpt.get("model.embed_tokens.weight")?.desc.dtype;
        if !matches!(float, DType::BF16 | DType::F32 | DType::F16) {
            return Err(Error::tensor(
                "model.embed_tokens.weight",
                format!("dtype {float} is not a float type"),
            ));
        }
        let needed = shard_needs(cfg, plan, float);
        // Validate everything before the first upload: a bad checkpoint fails fast.
        for n in &needed {
            ckpt.expect(&n.name, n.dtype, &n.full)?;
        }
        Self::upload(cfg, plan, float, backend, progress, &mut |n: &Need| {
            let t = ckpt.expect(&n.name, n.dtype, &n.full)?;
            let desc = gptoss_core::TensorDesc::new(n.dtype, n.shape.clone());
            Ok((desc, n.cut_bytes(t.bytes)))
        })
    }

    /// Upload every tensor `fetch` supplies (the shard's part, `Need::shape`), in
    /// [`shard_needs`] order.
    pub fn upload<'a>(
        cfg: &GptOssConfig,
        plan: &ShardPlan,
        float: DType,
        backend: &mut dyn Backend,
        progress: &mut dyn FnMut(u64, u64),
        fetch: &mut dyn FnMut(
            &Need,
        )
            -> Result<(gptoss_core::TensorDesc, std::borrow::Cow<'a, [u8]>)>,
    ) -> Result<ModelWeights> {
        let needed = shard_needs(cfg, plan, float);
        let total: u64 = needed.iter().map(Need::bytes).sum();
        let mut ids = Vec::with_capacity(needed.len());
        let mut done = 0u64;
        for n in &needed {
            let (desc, bytes) = fetch(n)?;
            if desc.shape.dims() != n.shape.as_slice() || bytes.len() as u64 != n.bytes() {
                return Err(Error::tensor(
                    &n.name,
                    format!(
                        "{} bytes of {desc} supplied, need {:?}",
                        bytes.len(),
                        n.shape
                    ),
                ));
            }
            ids.push(backend.load_weight(&n.name, &desc, &bytes)?);
            done += bytes.len() as u64;
            progress(done, total);
        }
        let mut it = ids.into_iter();
        Ok(ModelWeights::from_ids(
            cfg.num_hidden_layers,
            || it.next().expect("one id per needed tensor"),
            float,
        ))
    }

    /// The model's buffers taken from `next` in checkpoint order (embedding, each layer's
    /// tensors as `LayerWeights` lists them, final norm, lm_head): how `load` assembles what it
    /// uploaded, and how graph tests and tools make placeholder weights.
    pub fn from_ids(
        layers: usize,
        mut next: impl FnMut() -> BufferId,
        float_dtype: DType,
    ) -> ModelWeights {
        let embed = next();
        let layers = (0..layers)
            .map(|_| LayerWeights {
                input_norm: next(),
                q_w: next(),
                q_b: next(),
                k_w: next(),
                k_b: next(),
                v_w: next(),
                v_b: next(),
                o_w: next(),
                o_b: next(),
                sinks: next(),
                post_norm: next(),
                router_w: next(),
                router_b: next(),
                gate_up_blocks: next(),
                gate_up_scales: next(),
                gate_up_bias: next(),
                down_blocks: next(),
                down_scales: next(),
                down_bias: next(),
            })
            .collect();
        let norm = next();
        let lm_head = next();
        ModelWeights {
            embed,
            layers,
            norm,
            lm_head,
            float_dtype,
        }
    }
}
