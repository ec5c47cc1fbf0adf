//! `gptoss download`: gptoss never downloads. This command finds a model that is already in
//! the local Hugging Face cache, and otherwise says at once how to get it there.

use std::path::PathBuf;

use clap::Args as ClapArgs;
use gptoss_core::{Error, Result};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Hugging Face model id, e.g. openai/gpt-oss-20b (optionally @revision).
    pub repo: String,
}

/// The hub cache folder: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub.
fn cache_dir() -> PathBuf {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(p) = var("HF_HUB_CACHE") {
        return p;
    }
    if let Some(p) = var("HF_HOME") {
        return p.join("hub");
    }
    var("HOME")
        .unwrap_or_else(|| PathBuf::from("~"))
        .join(".cache")
        .join("huggingface")
        .join("hub")
}

pub fn run(a: Args) -> Result<()> {
    let repo = a.repo.trim();
    let valid_id = !repo.is_empty()
        && !repo.starts_with('/')
        && !repo.starts_with('.')
        && repo
            .split('@')
            .next()
            .is_some_and(|id| id.split('/').count() <= 2);
    if !valid_id {
        return Err(Error::Input(format!(
            "'{repo}' is not a Hugging Face model id (owner/name, e.g. openai/gpt-oss-20b)"
        )));
    }
    if std::path::Path::new(repo).is_dir() {
        println!("{repo} is a local folder: use it as it is (--model {repo}); nothing to download");
        return Ok(());
    }
    match gptoss_models::hub::resolve_model_dir(repo) {
        Ok(dir) => {
            println!(
                "{repo} is already in the local Hugging Face cache: {}\nuse it with --model {repo}",
                dir.display()
            );
            Ok(())
        }
        Err(_) => {
            let id = repo.split('@').next().unwrap_or(repo);
            Err(Error::Input(format!(
                "{repo} is not in the local Hugging Face cache ({cache}), and gptoss never downloads: \
                 it is built without network access (hf-hub without its download features), so \
                 nothing is fetched at run time.\n\
                 To get the model:\n  \
                 - on a machine with a network, run `huggingface-cli download {id}` (it fills \
                 $HF_HOME/hub, default ~/.cache/huggingface/hub), then copy that cache folder here \
                 and point $HF_HOME (or $HF_HUB_CACHE) at it; or\n  \
                 - copy the model folder (config.json and model*.safetensors) here and pass it \
                 with --model /path/to/folder.",
                cache = cache_dir().display()
            )))
        }
    }
}
