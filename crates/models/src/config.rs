//! gpt-oss `config.json`: parsing, validation, and the values the graph needs.

use std::path::{Path, PathBuf};

use gptoss_core::rope::{RopeParams, Yarn};
use gptoss_core::{Error, Result};
use serde::Deserialize;

/// Attention span of one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// Sees the last `sliding_window` positions (itself included).
    Sliding,
    /// Sees every earlier position.
    Full,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct RopeScaling {
    #[serde(default)]
    pub rope_type: Option<String>,
    #[serde(default, rename = "type")]
    pub legacy_type: Option<String>,
    #[serde(default)]
    pub factor: Option<f64>,
    #[serde(default)]
    pub beta_fast: Option<f64>,
    #[serde(default)]
    pub beta_slow: Option<f64>,
    #[serde(default)]
    pub original_max_position_embeddings: Option<u32>,
    #[serde(default)]
    pub truncate: Option<bool>,
    #[serde(default)]
    pub attention_factor: Option<f64>,
    /// transformers 5.x folds rope_theta in here (`rope_parameters`).
    #[serde(default)]
    pub rope_theta: Option<f64>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct QuantizationConfig {
    pub quant_method: String,
    #[serde(default)]
    pub modules_to_not_convert: Vec<String>,
}

/// The keys of a published gpt-oss config.json that the engine uses (others are ignored).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct GptOssConfig {
    #[serde(default)]
    pub model_type: Option<String>,
    pub num_hidden_layers: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub head_dim: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub num_local_experts: usize,
    pub num_experts_per_tok: usize,
    /// Duplicate of `num_experts_per_tok` carried over from the original config; must agree.
    #[serde(default)]
    pub experts_per_token: Option<usize>,
    pub vocab_size: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    pub sliding_window: usize,
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    #[serde(default)]
    pub rope_parameters: Option<RopeScaling>,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_swiglu_limit")]
    pub swiglu_limit: f64,
    #[serde(default = "default_true")]
    pub attention_bias: bool,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default)]
    pub quantization_config: Option<QuantizationConfig>,
}

fn default_eps() -> f64 {
    1e-5
}
fn default_max_pos() -> usize {
    131072
}
fn default_swiglu_limit() -> f64 {
    7.0
}
fn default_true() -> bool {
    true
}

/// SwiGLU's sigmoid slope; transformers and the original hard-code it.
pub const SWIGLU_ALPHA: f32 = 1.702;

impl GptOssConfig {
    /// Read `<dir>/config.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        if !dir.is_dir() {
            return Err(Error::file(dir, "model folder not found"));
        }
        let text = std::fs::read_to_string(&path).map_err(|e| {
            Error::file(&path, format!("cannot read the model config ({e}); a gpt-oss folder holds config.json and model*.safetensors"))
        })?;
        Self::parse(&text, &path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let cfg: GptOssConfig = serde_json::from_str(text)
            .map_err(|e| Error::format(path, format!("not a gpt-oss config: {e}")))?;
        cfg.validate()
            .map_err(|reason| Error::format(path, reason))?;
        Ok(cfg)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if let Some(t) = &self.model_type {
            if t != "gpt_oss" {
                return Err(format!(
                    "model_type is \"{t}\", this engine runs \"gpt_oss\""
                ));
            }
        }
        let checks: [(bool, String); 8] = [
            (
                self.num_hidden_layers > 0,
                "num_hidden_layers must be > 0".into(),
            ),
            (
                self.head_dim > 0 && self.head_dim % 2 == 0,
                format!("head_dim {} must be even and > 0", self.head_dim),
            ),
            (
                self.num_key_value_heads > 0
                    && self.num_attention_heads % self.num_key_value_heads == 0,
                format!(
                    "num_attention_heads {} must be a multiple of num_key_value_heads {}",
                    self.num_attention_heads, self.num_key_value_heads
                ),
            ),
            (
                self.hidden_size % 32 == 0,
                format!(
                    "hidden_size {} must be a multiple of 32 (MXFP4 blocks)",
                    self.hidden_size
                ),
            ),
            (
                self.intermediate_size % 32 == 0,
                format!(
                    "intermediate_size {} must be a multiple of 32 (MXFP4 blocks)",
                    self.intermediate_size
                ),
            ),
            (
                self.num_experts_per_tok > 0 && self.num_experts_per_tok <= self.num_local_experts,
                format!(
                    "num_experts_per_tok {} must be in 1..={}",
                    self.num_experts_per_tok, self.num_local_experts
                ),
            ),
            (self.vocab_size > 0, "vocab_size must be > 0".into()),
            (
                !self.tie_word_embeddings,
                "tie_word_embeddings is true; gpt-oss has a separate lm_head".into(),
            ),
        ];
        if let Some((_, msg)) = checks.iter().find(|(ok, _)| !ok) {
            return Err(msg.clone());
        }
        if let Some(k) = self
            .experts_per_token
            .filter(|k| *k != self.num_experts_per_tok)
        {
            return Err(format!(
                "experts_per_token {k} disagrees with num_experts_per_tok {}",
                self.num_experts_per_tok
            ));
        }
        if let Some(types) = &self.layer_types {
            if types.len() != self.num_hidden_layers {
                return Err(format!(
                    "layer_types has {} entries for {} layers",
                    types.len(),
                    self.num_hidden_layers
                ));
            }
            if let Some(bad) = types
                .iter()
                .find(|t| *t != "sliding_attention" && *t != "full_attention")
            {
                return Err(format!(
                    "unknown layer type \"{bad}\" (expected sliding_attention or full_attention)"
                ));
            }
        }
        if let Some(r) = self.rope() {
            let kind = r
                .rope_type
                .as_deref()
                .or(r.legacy_type.as_deref())
                .unwrap_or("default");
            if kind != "yarn" && kind != "default" {
                return Err(format!(
                    "rope_type \"{kind}\" is not supported (gpt-oss uses yarn)"
                ));
            }
        }
        Ok(())
    }

    fn rope(&self) -> Option<&RopeScaling> {
        self.rope_scaling.as_ref().or(self.rope_parameters.as_ref())
    }

    /// Layer `i`'s attention span: from `layer_types`, else gpt-oss's alternation (layer 0 sliding).
    pub fn layer_kind(&self, i: usize) -> LayerKind {
        match &self.layer_types {
            Some(t) if t[i] == "full_attention" => LayerKind::Full,
            Some(_) => LayerKind::Sliding,
            None if i % 2 == 0 => LayerKind::Sliding,
            None => LayerKind::Full,
        }
    }

    /// The context a run may use when the configuration says `configured` positions
    /// (0 = the model's own maximum): never more than the model's maximum.
    pub fn context_limit(&self, configured: usize) -> usize {
        match configured {
            0 => self.max_position_embeddings,
            n => n.min(self.max_position_embeddings),
        }
    }

    /// The window in positions for layer `i` (0 = unlimited).
    pub fn layer_window(&self, i: usize) -> u32 {
        match self.layer_kind(i) {
            LayerKind::Sliding => self.sliding_window as u32,
            LayerKind::Full => 0,
        }
    }

    pub fn rope_params(&self) -> RopeParams {
        let r = self.rope();
        let theta = self
            .rope_theta
            .or(r.and_then(|r| r.rope_theta))
            .unwrap_or(150000.0) as f32;
        let yarn = r
            .filter(|r| r.rope_type.as_deref().or(r.legacy_type.as_deref()) == Some("yarn"))
            .map(|r| Yarn {
                factor: r.factor.unwrap_or(1.0) as f32,
                beta_fast: r.beta_fast.unwrap_or(32.0) as f32,
                beta_slow: r.beta_slow.unwrap_or(1.0) as f32,
                original_max_position_embeddings: r
                    .original_max_position_embeddings
                    .unwrap_or(4096),
                truncate: r.truncate.unwrap_or(true),
                attention_factor: r.attention_factor.map(|a| a as f32),
            });
        RopeParams {
            head_dim: self.head_dim as u32,
            theta,
            yarn,
        }
    }

    /// Softmax scale of attention scores.
    pub fn attention_scale(&self) -> f32 {
        (self.head_dim as f32).powf(-0.5)
    }

    /// Stop token ids from `eos_token_id` (an int or a list).
    pub fn eos_token_ids(&self) -> Vec<u32> {
        match &self.eos_token_id {
            Some(serde_json::Value::Number(n)) => {
                n.as_u64().map(|v| vec![v as u32]).unwrap_or_default()
            }
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_u64())
                .map(|v| v as u32)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Whether the experts are stored as MXFP4 blocks + scales.
    pub fn experts_are_mxfp4(&self) -> bool {
        self.quantization_config
            .as_ref()
            .is_some_and(|q| q.quant_method == "mxfp4")
    }
}

/// The config file path of a model folder (for messages).
pub fn config_path(dir: &Path) -> PathBuf {
    dir.join("config.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published(layers: usize, experts: usize) -> String {
        let types: Vec<String> = (0..layers)
            .map(|i| {
                if i % 2 == 0 {
                    "\"sliding_attention\"".to_string()
                } else {
                    "\"full_attention\"".to_string()
                }
            })
            .collect();
        format!(
            r#"{{"architectures":["GptOssForCausalLM"],"attention_bias":true,"attention_dropout":0.0,"eos_token_id":200002,
            "experts_per_token":4,"head_dim":64,"hidden_act":"silu","hidden_size":2880,"initial_context_length":4096,
            "initializer_range":0.02,"intermediate_size":2880,"layer_types":[{}],"max_position_embeddings":131072,
            "model_type":"gpt_oss","num_attention_heads":64,"num_experts_per_tok":4,"num_hidden_layers":{layers},
            "num_key_value_heads":8,"num_local_experts":{experts},"output_router_logits":false,"pad_token_id":199999,
            "quantization_config":{{"modules_to_not_convert":["model.layers.*.self_attn","model.layers.*.mlp.router","model.embed_tokens","lm_head"],"quant_method":"mxfp4"}},
            "rms_norm_eps":1e-05,"rope_scaling":{{"beta_fast":32.0,"beta_slow":1.0,"factor":32.0,"original_max_position_embeddings":4096,"rope_type":"yarn","truncate":false}},
            "rope_theta":150000,"router_aux_loss_coef":0.9,"sliding_window":128,"swiglu_limit":7.0,"tie_word_embeddings":false,
            "transformers_version":"4.55.0.dev0","use_cache":true,"vocab_size":201088}}"#,
            types.join(",")
        )
    }

    #[test]
    fn gpt_oss_20b_and_120b_configs_parse() {
        for (layers, experts) in [(24, 32), (36, 128)] {
            let c =
                GptOssConfig::parse(&published(layers, experts), Path::new("config.json")).unwrap();
            assert_eq!(c.num_hidden_layers, layers);
            assert_eq!(c.num_local_experts, experts);
            assert_eq!(c.num_experts_per_tok, 4);
            assert_eq!(c.layer_kind(0), LayerKind::Sliding);
            assert_eq!(c.layer_kind(1), LayerKind::Full);
            assert_eq!(c.layer_window(0), 128);
            assert_eq!(c.layer_window(layers - 1), 0);
            assert!(c.experts_are_mxfp4());
            assert_eq!(c.eos_token_ids(), vec![200002]);
            assert_eq!(c.attention_scale(), 0.125);
            let r = c.rope_params();
            assert_eq!(r.theta, 150000.0);
            let y = r.yarn.unwrap();
            assert_eq!(
                (y.factor, y.original_max_position_embeddings, y.truncate),
                (32.0, 4096, false)
            );
        }
    }

    #[test]
    fn bad_values_name_the_key_and_file() {
        let bad = published(24, 32).replace("\"head_dim\":64", "\"head_dim\":63");
        let e = GptOssConfig::parse(&bad, Path::new("/m/config.json"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/m/config.json") && e.contains("head_dim 63"),
            "{e}"
        );
        let bad = published(24, 32).replace("\"vocab_size\":201088", "\"vocab_size\":\"big\"");
        let e = GptOssConfig::parse(&bad, Path::new("c.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("c.json") && e.contains("line"), "{e}");
        let missing = published(24, 32).replace("\"hidden_size\":2880,", "");
        let e = GptOssConfig::parse(&missing, Path::new("c.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("hidden_size"), "{e}");
        let e = GptOssConfig::parse(
            &published(24, 32).replace("gpt_oss", "llama"),
            Path::new("c.json"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("llama"), "{e}");
    }

    #[test]
    fn missing_config_names_the_file() {
        let dir = std::env::temp_dir().join(format!("gptoss-noconfig-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let e = GptOssConfig::load(&dir).unwrap_err().to_string();
        assert!(e.contains("config.json"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
        let e = GptOssConfig::load(&dir).unwrap_err().to_string();
        assert!(e.contains("model folder not found"), "{e}");
    }
}
