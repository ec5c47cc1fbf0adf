//! The engine's TOML configuration (config/default.toml documents every key).
//!
//! Unknown keys and wrong types are errors that name the key and the line.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{Error, Result};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// "auto" or a backend name.
    pub backend: String,
    /// Order in which equally scored backends are preferred.
    pub preference: Vec<String>,
    /// Extra folders searched for backend plugins.
    pub plugin_dirs: Vec<PathBuf>,
    /// CPU threads for the cpu backend; 0 = all cores.
    pub threads: usize,
    /// Largest context (prompt + generated tokens) a session reserves KV cache for; 0 = the model's maximum.
    pub max_context: usize,
    /// GPUs to split the model over (attention heads and expert columns); 1 = one GPU.
    pub tensor_parallel: usize,
    /// With tensor_parallel > 1: split the experts by expert instead of by their columns.
    pub expert_parallel: bool,
    /// CUDA backends: hold the MXFP4 experts as bf16 (expanded at load).
    pub dequantize: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            backend: "auto".into(),
            preference: vec![
                "cuda-mxfp4".into(),
                "cuda-bf16".into(),
                "wgpu".into(),
                "cpu".into(),
            ],
            plugin_dirs: Vec::new(),
            threads: 0,
            max_context: 4096,
            tensor_parallel: 1,
            expert_parallel: false,
            dequantize: false,
        }
    }
}

impl EngineConfig {
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        toml::from_str(text).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            reason: e.to_string().trim_end().to_string(),
        })
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::file(path, format!("cannot read config: {e}")))?;
        Self::parse(&text, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_default_parses_and_equals_built_in_defaults() {
        let text = include_str!("../../../config/default.toml");
        assert_eq!(
            EngineConfig::parse(text, Path::new("config/default.toml")).unwrap(),
            EngineConfig::default()
        );
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let err = EngineConfig::parse("backend = \"cpu\"\nbakend = \"x\"\n", Path::new("my.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("my.toml") && err.contains("bakend") && err.contains("line 2"),
            "{err}"
        );
    }

    #[test]
    fn wrong_type_is_named() {
        let err = EngineConfig::parse("threads = \"many\"\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("threads") || err.contains("line 1"), "{err}");
        assert!(err.contains("line 1"), "{err}");
    }
}
