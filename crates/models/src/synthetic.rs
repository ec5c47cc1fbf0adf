//! Random-weight gpt-oss models of the real shapes, built in memory: `gptoss bench` needs no
//! checkpoint files, and speed does not depend on the weights' values.

use std::borrow::Cow;

use gptoss_core::{Backend, DType, Error, Result, TensorDesc};

use std::path::Path;

use crate::config::GptOssConfig;
use crate::model::Model;
use crate::sharding::Sharding;
use crate::weights::{needs, ModelWeights, Need};

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
        GptOssConfig::parse(
            &self.config_json(layers),
            std::path::Path::new("<synthetic>"),
        )
        .expect("presets are valid configs")
    }

    /// config.json text of the preset, in the published key names.
    pub fn config_json(self, layers: Option<usize>) -> String {
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
        format!(
            r#"{{"model_type":"gpt_oss","num_hidden_layers":{n_layers},"hidden_size":{hidden},"intermediate_size":{hidden},
            "head_dim":64,"num_attention_heads":{heads},"num_key_value_heads":{kv},"num_local_experts":{experts},
            "num_experts_per_tok":4,"experts_per_token":4,"vocab_size":{vocab},"rms_norm_eps":1e-05,"sliding_window":128,
            "layer_types":[{}],"rope_theta":150000,"rope_scaling":{{"rope_type":"yarn","factor":32.0,"beta_fast":32.0,
            "beta_slow":1.0,"original_max_position_embeddings":4096,"truncate":false}},"max_position_embeddings":131072,
            "swiglu_limit":7.0,"attention_bias":true,"tie_word_embeddings":false,"eos_token_id":200002,
            "quantization_config":{{"quant_method":"mxfp4","modules_to_not_convert":["model.layers.*.self_attn",
            "model.layers.*.mlp.router","model.embed_tokens","lm_head"]}}}}"#,
            types.join(",")
        )
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

    /// Random contents for one tensor: norms ~1, MXFP4 scales moderate, the rest small.
    fn fill(&mut self, n: &Need, float: DType) -> Vec<u8> {
        let numel: usize = n.shape.iter().product();
        match n.dtype {
            DType::Mxfp4Blocks => self.tile(1, numel),
            DType::E8m0Scales => self.tile(2, numel),
            _ if n.name.ends_with("norm.weight") => {
                let v: Vec<f32> = (0..numel).map(|_| 1.0 + 0.1 * self.rng.uniform()).collect();
                encode_floats(&v, float)
            }
            _ => self.tile(0, numel * float.size()),
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
    load_synthetic_sharded(
        preset,
        layers,
        vec![backend],
        Sharding::NONE,
        seed,
        progress,
    )
}

/// [`load_synthetic`] split over `backends` as `sharding` says: each shard gets random
/// tensors of its part's shape (speed does not depend on the values).
pub fn load_synthetic_sharded(
    preset: Preset,
    layers: Option<usize>,
    backends: Vec<Box<dyn Backend>>,
    sharding: Sharding,
    seed: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Model> {
    let config = preset.config(layers);
    let float = DType::BF16;
    let mut pools = Pools::new(seed, float);
    Model::build(
        config,
        backends,
        sharding,
        progress,
        &mut |cfg, plan, backend, progress| {
            ModelWeights::upload(cfg, plan, float, backend, progress, &mut |n: &Need| {
                let desc = TensorDesc::new(n.dtype, n.shape.clone());
                Ok((desc, Cow::Owned(pools.fill(n, float))))
            })
        },
    )
}

/// Write a random checkpoint of `preset` to `dir` in the published layout: config.json,
/// `model-0000K-of-0000N.safetensors` shards of about `shard_bytes` (the converter's naming:
/// zero-based, "of" = count - 1) and model.safetensors.index.json. Each file is written to a
/// temporary name and renamed when complete; the index comes last.
pub fn write_checkpoint(
    preset: Preset,
    layers: Option<usize>,
    dir: &Path,
    shard_bytes: u64,
    seed: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let config = preset.config(layers);
    let float = DType::BF16;
    let needed = needs(&config, float);
    let size = |n: &Need| (n.shape.iter().product::<usize>() * n.dtype.size()) as u64;
    // Assign tensors to shards in order, starting a new shard when the current one is full.
    let mut shards: Vec<Vec<&Need>> = vec![Vec::new()];
    let mut current = 0u64;
    for n in &needed {
        if current > 0 && current + size(n) > shard_bytes {
            shards.push(Vec::new());
            current = 0;
        }
        current += size(n);
        shards.last_mut().expect("one shard at least").push(n);
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let total: u64 = needed.iter().map(size).sum();
    let last = shards.len() - 1;
    let mut pools = Pools::new(seed, float);
    let mut weight_map = serde_json::Map::new();
    let mut done = 0u64;
    for (i, shard) in shards.iter().enumerate() {
        let file = format!("model-{i:05}-of-{last:05}.safetensors");
        let data: Vec<(String, Vec<usize>, safetensors::Dtype, Vec<u8>)> = shard
            .iter()
            .map(|n| {
                let dtype = if n.dtype == DType::BF16 {
                    safetensors::Dtype::BF16
                } else {
                    safetensors::Dtype::U8
                };
                (n.name.clone(), n.shape.clone(), dtype, pools.fill(n, float))
            })
            .collect();
        let views = data
            .iter()
            .map(|(name, shape, dtype, bytes)| {
                safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| Error::tensor(name, e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
        write_atomically(&dir.join(&file), |tmp| {
            safetensors::serialize_to_file(views, Some(meta), tmp)
                .map_err(|e| Error::file(tmp, e.to_string()))
        })?;
        for n in shard {
            weight_map.insert(n.name.clone(), serde_json::Value::String(file.clone()));
            done += size(n);
        }
        progress(done, total);
    }
    let index =
        serde_json::json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
    write_atomically(&dir.join("config.json"), |tmp| {
        std::fs::write(tmp, preset.config_json(layers))
            .map_err(|e| Error::io(format!("writing {}", tmp.display()), e))
    })?;
    write_atomically(&dir.join("model.safetensors.index.json"), |tmp| {
        let text = serde_json::to_string_pretty(&index).expect("index serialises");
        std::fs::write(tmp, text).map_err(|e| Error::io(format!("writing {}", tmp.display()), e))
    })
}

fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = path.with_extension("partial");
    write(&tmp)?;
    std::fs::rename(&tmp, path)
        .map_err(|e| Error::io(format!("moving {} into place", tmp.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_checkpoint_loads_and_runs() {
        let dir = tempfile::tempdir().unwrap();
        write_checkpoint(
            Preset::Tiny,
            Some(2),
            dir.path(),
            4 << 20,
            1,
            &mut |_, _| {},
        )
        .unwrap();
        let index =
            std::fs::read_to_string(dir.path().join("model.safetensors.index.json")).unwrap();
        let shards: std::collections::BTreeSet<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".safetensors"))
            .collect();
        assert!(shards.len() >= 2, "{shards:?}");
        let n = shards.len() - 1;
        assert!(
            shards.contains(&format!("model-00000-of-{n:05}.safetensors")),
            "{shards:?}"
        );
        assert!(index.contains("total_size") && index.contains("lm_head.weight"));
        assert!(!std::fs::read_dir(dir.path()).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with("partial")));
        // The published loading path accepts every tensor with the config's shapes and dtypes.
        let cfg = GptOssConfig::load(dir.path()).unwrap();
        let ckpt = crate::checkpoint::Checkpoint::open(dir.path()).unwrap();
        for n in needs(&cfg, DType::BF16) {
            ckpt.expect(&n.name, n.dtype, &n.shape).unwrap();
        }
        assert_eq!(ckpt.names().len(), needs(&cfg, DType::BF16).len());
    }

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
