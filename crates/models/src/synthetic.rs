//! Random-weight gpt-oss models of the real shapes, built in memory: `gptoss bench` needs no
//! checkpoint files, and speed does not depend on the weights' values.

use std::borrow::Cow;

use gptoss_core::{Backend, DType, Error, Result, TensorDesc};

use crate::config::GptOssConfig;
use crate::model::Model;
use crate::weights::{ModelWeights, Need};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// gpt-oss-20b: 24 layers, 32 experts.
    Gpt20b,
    /// gpt-oss-120b: 36 layers, 128 experts.
    Gpt120b,
    /// A small model for quick checks: 4 layers, hidden 256, 8 experts, vocab 8192.
    Tiny,
}

impl Preset {
    pub fn parse(s: &str) -> Result<Preset> {
        match s {
            "20b" | "gpt-oss-20b" => Ok(Preset::Gpt20b),
            "120b" | "gpt-oss-120b" => Ok(Preset::Gpt120b),
            "tiny" => Ok(Preset::Tiny),
            other => Err(Error::Input(format!(
                "unknown synthetic preset '{other}'; choose 20b, 120b or tiny"
            ))),
        }
    }

    /// The published config of the preset; `layers` cuts the depth (for quick checks).
    pub fn config(self, layers: Option<usize>) -> GptOssConfig {
        let (n_layers, experts, hidden, heads, kv, vocab) = match self {
            Preset::Gpt20b => (24, 32, 2880, 64, 8, 201088),
            Preset::Gpt120b => (36, 128, 2880, 64, 8, 201088),
            Preset::Tiny => (4, 8, 256, 8, 2, 8192),
        };
        let n_layers = layers.unwrap_or(n_layers);
        let types: Vec<String> = (0..n_layers)
            .map(|i| {
                if i % 2 == 0 {
                    "\"sliding_attention\""
                } else {
                    "\"full_attention\""
                }
                .to_string()
            })
            .collect();
        let json = format!(
            r#"{{"model_type":"gpt_oss","num_hidden_layers":{n_layers},"hidden_size":{hidden},"intermediate_size":{hidden},
            "head_dim":64,"num_attention_heads":{heads},"num_key_value_heads":{kv},"num_local_experts":{experts},
            "num_experts_per_tok":4,"experts_per_token":4,"vocab_size":{vocab},"rms_norm_eps":1e-05,"sliding_window":128,
            "layer_types":[{}],"rope_theta":150000,"rope_scaling":{{"rope_type":"yarn","factor":32.0,"beta_fast":32.0,
            "beta_slow":1.0,"original_max_position_embeddings":4096,"truncate":false}},"max_position_embeddings":131072,
            "swiglu_limit":7.0,"attention_bias":true,"tie_word_embeddings":false,"eos_token_id":200002,
            "quantization_config":{{"quant_method":"mxfp4"}}}}"#,
            types.join(",")
        );
        GptOssConfig::parse(&json, std::path::Path::new("<synthetic>"))
            .expect("presets are valid configs")
    }
}

/// xorshift64*: fast, deterministic, good enough for filler weights.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// Pools of random bytes, tiled into large tensors (generating gigabytes value by value
/// would dominate the bench's start-up).
struct Pools {
    rng: Rng,
    float: Vec<u8>,
    blocks: Vec<u8>,
    scales: Vec<u8>,
}

const POOL: usize = 8 << 20;

impl Pools {
    fn new(seed: u64, float: DType) -> Pools {
        let mut rng = Rng(seed | 1);
        let floats: Vec<f32> = (0..POOL / 2).map(|_| rng.uniform() * 0.05).collect();
        let float = encode_floats(&floats, float);
        let blocks = (0..POOL).map(|_| rng.next() as u8).collect();
        // scales 2^-9 .. 2^-3: finite, moderate products
        let scales = (0..POOL).map(|_| 118 + (rng.next() % 7) as u8).collect();
        Pools {
            rng,
            float,
            blocks,
            scales,
        }
    }

    fn tile(&mut self, pool: usize, len: usize) -> Vec<u8> {
        let src = match pool {
            0 => &self.float,
            1 => &self.blocks,
            _ => &self.scales,
        };
        let start = (self.rng.next() as usize % (src.len() / 2)) & !3;
        let mut out = Vec::with_capacity(len);
        let mut at = start;
        while out.len() < len {
            let take = (len - out.len()).min(src.len() - at);
            out.extend_from_slice(&src[at..at + take]);
            at = 0;
        }
        out
    }
}

fn encode_floats(v: &[f32], dtype: DType) -> Vec<u8> {
    match dtype {
        DType::BF16 => gptoss_core::bf16::f32_to_bytes(v),
        _ => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

/// Build a random model of `preset` directly on `backend`. Norm weights are ~1 and everything
/// else small, so activations stay finite through all layers.
pub fn load_synthetic(
    preset: Preset,
    layers: Option<usize>,
    backend: Box<dyn Backend>,
    seed: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Model> {
    let config = preset.config(layers);
    let float = DType::BF16;
    let mut backend = backend;
    let mut pools = Pools::new(seed, float);
    let weights = ModelWeights::upload(
        &config,
        float,
        backend.as_mut(),
        progress,
        &mut |n: &Need| {
            let numel: usize = n.shape.iter().product();
            let desc = TensorDesc::new(n.dtype, n.shape.clone());
            let bytes = match n.dtype {
                DType::Mxfp4Blocks => pools.tile(1, numel),
                DType::E8m0Scales => pools.tile(2, numel),
                _ if n.name.ends_with("norm.weight") => {
                    let v: Vec<f32> = (0..numel)
                        .map(|_| 1.0 + 0.1 * pools.rng.uniform())
                        .collect();
                    encode_floats(&v, float)
                }
                _ => pools.tile(0, numel * float.size()),
            };
            Ok((desc, Cow::Owned(bytes)))
        },
    )?;
    Ok(Model::from_parts(config, weights, backend))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_have_the_published_shapes() {
        let c = Preset::Gpt20b.config(None);
        assert_eq!(
            (c.num_hidden_layers, c.num_local_experts, c.vocab_size),
            (24, 32, 201088)
        );
        let c = Preset::Gpt120b.config(Some(2));
        assert_eq!((c.num_hidden_layers, c.num_local_experts), (2, 128));
        assert!(Preset::parse("7b")
            .unwrap_err()
            .to_string()
            .contains("20b, 120b or tiny"));
    }

    #[test]
    fn tiles_are_random_not_zero_and_the_right_length() {
        let mut p = Pools::new(7, DType::BF16);
        let t = p.tile(1, POOL + 123);
        assert_eq!(t.len(), POOL + 123);
        assert!(t.iter().filter(|b| **b == 0).count() < t.len() / 100);
        assert!(p.tile(2, 1000).iter().all(|s| (118..125).contains(s)));
    }
}
