//! `gptoss download`: fetch a model from the Hugging Face hub into the local HF cache, for
//! users with a network. Running a model never needs the network; this is the only command
//! that uses it. Files already in the cache are not fetched again, and an interrupted
//! download resumes where it stopped.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::Args as ClapArgs;
use gptoss_core::{Error, Result};
use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Repo, RepoType};

#[derive(ClapArgs, Debug)]
#[command(
    long_about = "Fetch a model from the Hugging Face hub into the local HF cache \
($HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub), with a progress bar; an \
interrupted download resumes. Only this command uses the network: afterwards `--model REPO` \
runs offline. $HF_ENDPOINT selects another hub (a mirror)."
)]
pub struct Args {
    /// Hugging Face model id, e.g. openai/gpt-oss-20b (optionally @revision).
    pub repo: String,
}

/// Files beside the weights that gptoss uses when present.
const OPTIONAL_FILES: &[&str] = &[
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
];

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

fn endpoint() -> String {
    std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into())
}

fn is_not_found(e: &ApiError) -> bool {
    matches!(e, ApiError::RequestError(r) if matches!(**r, ureq::Error::Status(404, _)))
}

/// What went wrong, in words that say what to do.
fn explain(repo: &str, file: &str, e: ApiError) -> Error {
    let id = repo.split('@').next().unwrap_or(repo);
    let reason = match &e {
        ApiError::RequestError(r) if matches!(**r, ureq::Error::Transport(_)) => {
            format!("cannot reach the hub at {} ({e})", endpoint())
        }
        ApiError::RequestError(r) if matches!(**r, ureq::Error::Status(401 | 403, _)) => {
            format!("{id} needs an access token ({e}); put it in $HF_TOKEN or $HF_HOME/token")
        }
        _ if is_not_found(&e) => format!("{id} has no file {file} at {} ({e})", endpoint()),
        _ => format!("fetching {file} failed: {e}"),
    };
    Error::Input(format!(
        "{reason}.\nRunning a model needs no network: copy a model folder here and pass \
         --model /path/to/folder, or fill the HF cache ({}) on a machine with a network \
         (`gptoss download {id}` or `huggingface-cli download {id}`) and copy it here.",
        cache_dir().display()
    ))
}

fn get(repo_api: &ApiRepo, repo: &str, file: &str) -> Result<PathBuf> {
    repo_api.get(file).map_err(|e| explain(repo, file, e))
}

/// Shard files named by an index's weight_map, sorted and unique.
fn shards_of(index: &Path) -> Result<BTreeSet<String>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::file(index, e.to_string()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::format(index, e.to_string()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::format(index, "no weight_map"))?;
    Ok(map
        .values()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect())
}

/// The snapshot folder if config and every weight file are cached already (no network).
fn complete_in_cache(repo: &Repo) -> Result<Option<PathBuf>> {
    let cache = hf_hub::Cache::from_env().repo(repo.clone());
    let Some(config) = cache.get("config.json") else {
        return Ok(None);
    };
    let weights_cached = match cache.get("model.safetensors.index.json") {
        Some(index) => shards_of(&index)?.iter().all(|s| cache.get(s).is_some()),
        None => cache.get("model.safetensors").is_some(),
    };
    Ok(weights_cached.then(|| config.parent().unwrap_or(Path::new(".")).to_path_buf()))
}

pub fn run(a: Args) -> Result<()> {
    let repo = a.repo.trim();
    let (id, revision) = match repo.split_once('@') {
        Some((id, rev)) => (id, Some(rev)),
        None => (repo, None),
    };
    let valid_id = !id.is_empty()
        && !id.starts_with('/')
        && !id.starts_with('.')
        && id.split('/').count() == 2;
    if Path::new(repo).is_dir() {
        println!("{repo} is a local folder: use it as it is (--model {repo}); nothing to download");
        return Ok(());
    }
    if !valid_id {
        return Err(Error::Input(format!(
            "'{repo}' is not a Hugging Face model id (owner/name, e.g. openai/gpt-oss-20b)"
        )));
    }
    let api = ApiBuilder::from_env()
        .with_progress(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_retries(3)
        .build()
        .map_err(|e| Error::Input(format!("cannot set up the hub client: {e}")))?;
    let hub_repo = match revision {
        Some(rev) => Repo::with_revision(id.to_string(), RepoType::Model, rev.to_string()),
        None => Repo::new(id.to_string(), RepoType::Model),
    };
    if let Some(dir) = complete_in_cache(&hub_repo)? {
        println!(
            "{repo} is already in the local Hugging Face cache: {}\nrun it with --model {repo}",
            dir.display()
        );
        return Ok(());
    }
    let repo_api = api.repo(hub_repo);
    let config = get(&repo_api, repo, "config.json")?;
    for f in OPTIONAL_FILES {
        if let Err(e) = repo_api.get(f) {
            if !is_not_found(&e) {
                return Err(explain(repo, f, e));
            }
        }
    }
    match repo_api.get("model.safetensors.index.json") {
        Ok(index) => {
            let shards = shards_of(&index)?;
            for (i, shard) in shards.iter().enumerate() {
                eprintln!("[{}/{}] {shard}", i + 1, shards.len());
                get(&repo_api, repo, shard)?;
            }
        }
        Err(e) if is_not_found(&e) => {
            get(&repo_api, repo, "model.safetensors")?;
        }
        Err(e) => return Err(explain(repo, "model.safetensors.index.json", e)),
    }
    let dir = config.parent().unwrap_or(Path::new("."));
    println!(
        "{repo} is in the local Hugging Face cache: {}\nrun it with --model {repo}",
        dir.display()
    );
    Ok(())
}
