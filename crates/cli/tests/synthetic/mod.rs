//! A tiny gpt-oss checkpoint with the real vocabulary (201088 ids), written at test time, so
//! that text prompts run end to end (tokenizer → harmony → model → parser) on the cpu backend.
//!
//! Shapes: hidden 32, 1 layer, 2 MXFP4 experts, 2 heads of 16. The weights are random except
//! for a bias towards a handful of tokens: embedding column 0 is a large constant, so the
//! normalised hidden state always points along dimension 0, and `lm_head[id][0]` is large
//! only for the favoured ids. The model therefore babbles a mix of words and harmony control
//! tokens (`<|channel|>final<|message|> Hello world.`), which exercises the parser, and the
//! seed decides the mix.

#![allow(dead_code)]

use std::path::Path;

use gptoss_models::tokenizer::{self, Tokenizer};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

pub const VOCAB: usize = 201088;
const H: usize = 32;
const I: usize = 32;
const HEADS: usize = 2;
const KV: usize = 1;
const D: usize = 16;
const E: usize = 2;

/// Ordinary text the model favours (each one token of o200k).
pub const WORDS: [&str; 6] = [" Hello", " world", ".", "final", "analysis", "\n"];
/// Control tokens it favours a little less (never `<|return|>`: replies run to max tokens
/// unless `<|call|>`... which is not favoured either).
pub const CONTROL: [u32; 4] = [
    tokenizer::CHANNEL,
    tokenizer::MESSAGE,
    tokenizer::END,
    tokenizer::START,
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [-1, 1).
    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

fn bf16(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|x| ((x.to_bits() >> 16) as u16).to_le_bytes())
        .collect()
}

/// The ids of [`WORDS`] (each must be a single token).
pub fn word_ids() -> Vec<u32> {
    let tok = Tokenizer::o200k_harmony().expect("built-in tokenizer");
    WORDS
        .iter()
        .map(|w| {
            let ids = tok.encode(w).unwrap();
            assert_eq!(ids.len(), 1, "{w:?} is one token");
            ids[0]
        })
        .collect()
}

/// Writes config.json and model.safetensors into `dir`.
pub fn write_model(dir: &Path) {
    let config = format!(
        r#"{{"architectures":["GptOssForCausalLM"],"model_type":"gpt_oss","num_hidden_layers":1,
        "hidden_size":{H},"intermediate_size":{I},"head_dim":{D},"num_attention_heads":{HEADS},
        "num_key_value_heads":{KV},"num_local_experts":{E},"num_experts_per_tok":2,"experts_per_token":2,
        "vocab_size":{VOCAB},"rms_norm_eps":1e-05,"sliding_window":8,"layer_types":["full_attention"],
        "rope_theta":150000,"rope_scaling":{{"rope_type":"yarn","factor":32.0,"beta_fast":32.0,
        "beta_slow":1.0,"original_max_position_embeddings":4096,"truncate":false}},
        "max_position_embeddings":131072,"swiglu_limit":7.0,"attention_bias":true,
        "tie_word_embeddings":false,"eos_token_id":[200002,199999,200012],
        "quantization_config":{{"quant_method":"mxfp4"}}}}"#
    );
    std::fs::write(dir.join("config.json"), config).unwrap();

    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut small = |n: usize, scale: f32| -> Vec<f32> {
        (0..n).map(|_| rng.uniform() * scale).collect::<Vec<f32>>()
    };
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut float = |name: &str, shape: Vec<usize>, v: Vec<f32>| {
        tensors.push((name.to_string(), Dtype::BF16, shape, bf16(&v)));
    };

    let mut embed = small(VOCAB * H, 0.05);
    for row in embed.chunks_exact_mut(H) {
        row[0] = 4.0;
    }
    float("model.embed_tokens.weight", vec![VOCAB, H], embed);
    let p = "model.layers.0.";
    let ones = |n: usize| vec![1.0f32; n];
    float(&format!("{p}input_layernorm.weight"), vec![H], ones(H));
    for (name, rows, cols) in [
        ("q_proj", HEADS * D, H),
        ("k_proj", KV * D, H),
        ("v_proj", KV * D, H),
        ("o_proj", H, HEADS * D),
    ] {
        float(
            &format!("{p}self_attn.{name}.weight"),
            vec![rows, cols],
            small(rows * cols, 0.05),
        );
        float(
            &format!("{p}self_attn.{name}.bias"),
            vec![rows],
            small(rows, 0.01),
        );
    }
    float(
        &format!("{p}self_attn.sinks"),
        vec![HEADS],
        small(HEADS, 0.1),
    );
    float(
        &format!("{p}post_attention_layernorm.weight"),
        vec![H],
        ones(H),
    );
    float(
        &format!("{p}mlp.router.weight"),
        vec![E, H],
        small(E * H, 0.1),
    );
    float(&format!("{p}mlp.router.bias"), vec![E], small(E, 0.1));
    float(
        &format!("{p}mlp.experts.gate_up_proj_bias"),
        vec![E, 2 * I],
        small(E * 2 * I, 0.01),
    );
    float(
        &format!("{p}mlp.experts.down_proj_bias"),
        vec![E, H],
        small(E * H, 0.01),
    );
    float("model.norm.weight", vec![H], ones(H));
    let mut lm = small(VOCAB * H, 0.05);
    for row in lm.chunks_exact_mut(H) {
        row[0] = 0.0;
    }
    // Logit ≈ 5.7 × weight: a weight 0.2 higher is 3× as likely. Favour what opens an
    // analysis message (`<|channel|>analysis<|message|>`), disfavour the newline (it turns a
    // header into text).
    let weight = |w: &str| match w {
        "analysis" => 3.0,
        "\n" => 2.4,
        _ => 2.8,
    };
    for (id, w) in word_ids().into_iter().zip(WORDS) {
        lm[id as usize * H] = weight(w);
    }
    for id in CONTROL {
        lm[id as usize * H] = if matches!(id, tokenizer::CHANNEL | tokenizer::MESSAGE) {
            3.0
        } else {
            2.8
        };
    }
    float("lm_head.weight", vec![VOCAB, H], lm);

    // MXFP4 experts: random nibbles, scales 2^-9..2^-7 (weights of at most 6/128).
    let mut bytes =
        |n: usize, f: &dyn Fn(u64) -> u8| (0..n).map(|_| f(rng.next())).collect::<Vec<u8>>();
    let x = format!("{p}mlp.experts.");
    let (gu_blocks, gu_scales) = (
        bytes(E * 2 * I * (H / 32) * 16, &|r| r as u8),
        bytes(E * 2 * I * (H / 32), &|r| 118 + (r % 3) as u8),
    );
    let (dn_blocks, dn_scales) = (
        bytes(E * H * (I / 32) * 16, &|r| r as u8),
        bytes(E * H * (I / 32), &|r| 118 + (r % 3) as u8),
    );
    tensors.push((
        format!("{x}gate_up_proj_blocks"),
        Dtype::U8,
        vec![E, 2 * I, H / 32, 16],
        gu_blocks,
    ));
    tensors.push((
        format!("{x}gate_up_proj_scales"),
        Dtype::U8,
        vec![E, 2 * I, H / 32],
        gu_scales,
    ));
    tensors.push((
        format!("{x}down_proj_blocks"),
        Dtype::U8,
        vec![E, H, I / 32, 16],
        dn_blocks,
    ));
    tensors.push((
        format!("{x}down_proj_scales"),
        Dtype::U8,
        vec![E, H, I / 32],
        dn_scales,
    ));

    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, dt, shape, data)| {
            (
                n.clone(),
                TensorView::new(*dt, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

/// A temp folder holding the model (removed when dropped).
pub fn model_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path());
    dir
}
