//! Options shared by the commands that load a model.

use std::path::{Path, PathBuf};

use clap::Args as ClapArgs;
use gptoss_core::config::EngineConfig;
use gptoss_core::{Error, Result};
use gptoss_models::Model;

use crate::{backend_select, progress};

#[derive(ClapArgs, Debug)]
pub struct ModelArgs {
    /// Model folder, or a Hugging Face id already in the local cache (e.g. openai/gpt-oss-20b).
    #[arg(long, short = 'm')]
    pub model: String,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// Where to run: backend, config file, threads.
#[derive(ClapArgs, Debug)]
pub struct EngineArgs {
    /// Backend to run on: "auto" or a name (see `gptoss backends`). Default from the config file.
    #[arg(long, short = 'b')]
    pub backend: Option<String>,
    /// Engine config file (TOML); default $GPTOSS_CONFIG if set, else built-in defaults.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// CPU threads for the cpu backend (0 = all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Split the model over N GPUs (tensor parallel; NCCL sums). Default from the config (1).
    #[arg(long, value_name = "N")]
    pub tensor_parallel: Option<usize>,
    /// With --tensor-parallel N: split the experts by expert (expert parallel) instead of by
    /// their columns.
    #[arg(long)]
    pub expert_parallel: bool,
    /// CUDA backends: expand the MXFP4 experts to bf16 at load (exact; about 4x their memory)
    /// and run them as bf16 matrix products. Needs an sm_80+ GPU.
    #[arg(long)]
    pub dequantize: bool,
}

impl EngineArgs {
    pub fn engine_config(&self) -> Result<EngineConfig> {
        let mut cfg = load_config(self.config.as_deref())?;
        if let Some(b) = &self.backend {
            cfg.backend = b.clone();
        }
        if let Some(t) = self.threads {
            cfg.threads = t;
        }
        if let Some(n) = self.tensor_parallel {
            cfg.tensor_parallel = n;
        }
        if self.expert_parallel {
            cfg.expert_parallel = true;
        }
        if self.dequantize {
            cfg.dequantize = true;
        }
        if cfg.tensor_parallel == 0 {
            return Err(Error::Input(
                "--tensor-parallel 0: give the number of GPUs, at least 1".into(),
            ));
        }
        Ok(cfg)
    }
}

impl ModelArgs {
    /// Resolve the model, pick the backend, load the weights with a progress line on stderr.
    pub fn load(&self) -> Result<(Model, EngineConfig)> {
        self.load_with_room().map(|(m, cfg, _)| (m, cfg))
    }

    /// [`load`](Self::load), also saying how many KV-cache positions fit beside the weights
    /// on every device (None when the devices do not report their memory).
    pub fn load_with_room(&self) -> Result<(Model, EngineConfig, Option<usize>)> {
        let cfg = self.engine.engine_config()?;
        let dir = gptoss_models::hub::resolve_model_dir(&self.model)?;
        let model_cfg = gptoss_models::GptOssConfig::load(&dir)?;
        let opened = backend_select::open_shards(&cfg, Some(&model_cfg))?;
        let (backends, room) = (opened.backends, opened.kv_room);
        let mut bar = progress::Progress::new(format!(
            "loading {} on {}",
            dir.display(),
            backend_select::describe(&backends)
        ));
        let mut model = Model::load_sharded(
            &dir,
            backends,
            backend_select::sharding(&cfg),
            &mut |done, total| bar.update(done, total),
        )?;
        bar.finish();
        model.dequantized_experts = cfg.dequantize;
        Ok((model, cfg, room))
    }
}

/// The engine config: `path` if given, else `$GPTOSS_CONFIG` if set, else built-in defaults.
pub fn load_config(path: Option<&Path>) -> Result<EngineConfig> {
    let path = path
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("GPTOSS_CONFIG").map(PathBuf::from));
    match path {
        Some(p) => EngineConfig::load(&p),
        None => Ok(EngineConfig::default()),
    }
}

/// Parse "1,2,3" into token ids.
pub fn parse_tokens(s: &str) -> Result<Vec<u32>> {
    parse_ids(s, "--tokens")
}

/// Parse "1,2,3" (also "1, 2, 3") into token ids; `what` names the input in errors.
pub fn parse_ids(s: &str, what: &str) -> Result<Vec<u32>> {
    let ids: Result<Vec<u32>> = s
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<u32>().map_err(|_| {
                Error::Input(format!(
                    "{what}: '{t}' is not a token id (expected comma-separated non-negative integers)"
                ))
            })
        })
        .collect();
    let ids = ids?;
    if ids.is_empty() {
        return Err(Error::Input(format!(
            "{what}: empty; give at least one token id, e.g. 1,2,3"
        )));
    }
    Ok(ids)
}

/// The KV capacity for a run that needs `needed` positions, refused up front when it exceeds
/// the configured `max_context` or the model's own limit.
pub fn context_for(
    cfg: &EngineConfig,
    model: &gptoss_models::GptOssConfig,
    needed: usize,
) -> Result<usize> {
    let model_max = model.max_position_embeddings;
    if needed > model_max {
        return Err(Error::Input(format!(
            "{needed} positions requested, but this model's context is {model_max} tokens"
        )));
    }
    if cfg.max_context != 0 && needed > cfg.max_context {
        return Err(Error::Input(format!(
            "{needed} positions requested (prompt + new tokens), more than max_context = {}; raise max_context in the config file",
            cfg.max_context
        )));
    }
    Ok(needed)
}
