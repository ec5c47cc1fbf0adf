//! Where a model lives: a local folder, or a Hugging Face hub id resolved in the local HF cache.
//!
//! Only the cache already on disk is consulted (never the network): a model is downloaded
//! beforehand with `huggingface-cli download ID` or `gptoss download ID`.
//!
//! Cache layout (the one `huggingface_hub` writes and `hf_hub::Cache` reads):
//! `<cache>/models--<owner>--<name>/refs/<branch>` holds a commit hash, and
//! `<cache>/models--<owner>--<name>/snapshots/<hash>/` holds the files (symlinks into `blobs/`).
//! `<cache>` is `$HF_HUB_CACHE` if set, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.

use std::path::{Path, PathBuf};

use gptoss_core::{Error, Result};

/// A model given as a local folder, or as a Hugging Face hub id ("openai/gpt-oss-20b") resolved from the local HF cache
/// (hf_hub::Cache::from_env(), i.e. $HF_HOME or ~/.cache/huggingface/hub; never the network). Returns the folder
/// holding config.json. Errors: a path that does not exist and is not a cached hub id -> message naming both places
/// looked, and the fix (pass a local folder, or download the model first, e.g. `huggingface-cli download ID` / `gptoss download ID`).
///
/// A hub id may carry a revision, `owner/name@branch` or `owner/name@<commit hash>`; the default is `main`.
/// `$HF_HUB_CACHE`, when set, takes precedence over `$HF_HOME` as `huggingface-cli` does.
pub fn resolve_model_dir(spec: &str) -> Result<PathBuf> {
    if spec.trim().is_empty() {
        return Err(Error::Input(
            "no model given: pass a model folder or a Hugging Face hub id such as \
             openai/gpt-oss-20b"
                .into(),
        ));
    }
    let path = Path::new(spec);
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.is_dir() {
            return Ok(path.to_path_buf());
        }
        if path.file_name().is_some_and(|f| f == "config.json") {
            if let Some(parent) = path.parent() {
                let parent = if parent.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    parent
                };
                return Ok(parent.to_path_buf());
            }
        }
        return Err(Error::file(
            path,
            "is a file, not a model folder: pass the folder that holds config.json and the \
             .safetensors files",
        ));
    }

    let local = describe_local(path);
    let Some((repo_id, revision)) = parse_hub_id(spec) else {
        return Err(Error::file(
            path,
            format!(
                "no such model folder ({local}), and it is not a Hugging Face hub id of the form \
                 owner/name (e.g. openai/gpt-oss-20b). Pass an existing local folder"
            ),
        ));
    };

    let cache = cache_dir();
    let repo = hf_hub::Repo::with_revision(
        repo_id.to_string(),
        hf_hub::RepoType::Model,
        revision.unwrap_or("main").to_string(),
    );
    let repo_dir = cache.join(repo.folder_name());
    match lookup_snapshot(&repo_dir, revision) {
        Ok(dir) => {
            tracing::debug!(id = spec, dir = %dir.display(), "resolved hub id in the local HF cache");
            Ok(dir)
        }
        Err(why) => Err(Error::file(
            path,
            format!(
                "not a local folder ({local}), and not in the Hugging Face cache: {why}. Pass a \
                 local model folder, or download the model first, e.g. `huggingface-cli download \
                 {repo_id}` or `gptoss download {repo_id}` (the cache is $HF_HUB_CACHE, else \
                 $HF_HOME/hub, else ~/.cache/huggingface/hub)"
            ),
        )),
    }
}

fn describe_local(path: &Path) -> String {
    if path.is_absolute() {
        format!("{} does not exist", path.display())
    } else {
        match std::env::current_dir() {
            Ok(cwd) => format!("{} does not exist", cwd.join(path).display()),
            Err(_) => format!("{} does not exist in the current folder", path.display()),
        }
    }
}

/// The hub cache folder, as hf-hub and huggingface_hub compute it.
fn cache_dir() -> PathBuf {
    match std::env::var_os("HF_HUB_CACHE") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => hf_hub::Cache::from_env().path().clone(),
    }
}

/// `owner/name`, `name`, optionally followed by `@revision`. Each part is made of ASCII letters,
/// digits, `-`, `_` and `.` (not `.` or `..` alone): anything else is a path, not an id.
fn parse_hub_id(spec: &str) -> Option<(&str, Option<&str>)> {
    let (id, revision) = match spec.split_once('@') {
        Some((id, rev)) => {
            let ok = !rev.is_empty()
                && !rev.contains("..")
                && !rev.starts_with('/')
                && rev
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
            if !ok {
                return None;
            }
            (id, Some(rev))
        }
        None => (spec, None),
    };
    let parts: Vec<&str> = id.split('/').collect();
    if parts.len() > 2 {
        return None;
    }
    let part_ok = |p: &str| {
        !p.is_empty()
            && p != "."
            && p != ".."
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    parts.iter().all(|p| part_ok(p)).then_some((id, revision))
}

/// The snapshot folder of a cached repo, or why there is none (naming the place looked).
fn lookup_snapshot(
    repo_dir: &Path,
    revision: Option<&str>,
) -> std::result::Result<PathBuf, String> {
    if !repo_dir.is_dir() {
        return Err(format!("{} does not exist", repo_dir.display()));
    }
    let snapshots = repo_dir.join("snapshots");
    let rev = revision.unwrap_or("main");
    let ref_path = repo_dir.join("refs").join(rev);
    let snapshot = if let Ok(hash) = std::fs::read_to_string(&ref_path) {
        let hash = hash.trim();
        if hash.is_empty() {
            return Err(format!("{} is empty", ref_path.display()));
        }
        snapshots.join(hash)
    } else if revision.is_some() && snapshots.join(rev).is_dir() {
        // A commit hash given directly.
        snapshots.join(rev)
    } else if revision.is_none() {
        // No refs/main (e.g. downloaded at a pinned revision): use the only snapshot if there
        // is exactly one.
        let found: Vec<PathBuf> = std::fs::read_dir(&snapshots)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default();
        match found.len() {
            1 => found.into_iter().next().unwrap(),
            0 => {
                return Err(format!(
                    "{} has no {} and no snapshot in {}",
                    repo_dir.display(),
                    Path::new("refs").join("main").display(),
                    snapshots.display()
                ))
            }
            n => {
                return Err(format!(
                    "{} has no {} and {n} snapshots in {}; name one with ID@<commit>",
                    repo_dir.display(),
                    Path::new("refs").join("main").display(),
                    snapshots.display()
                ))
            }
        }
    } else {
        return Err(format!(
            "{} has neither {} nor {}",
            repo_dir.display(),
            ref_path.display(),
            snapshots.join(rev).display()
        ));
    };
    if !snapshot.is_dir() {
        return Err(format!(
            "{} names snapshot {}, which does not exist",
            ref_path.display(),
            snapshot.display()
        ));
    }
    if !snapshot.join("config.json").exists() {
        return Err(format!(
            "the cached snapshot {} has no config.json (incomplete download?)",
            snapshot.display()
        ));
    }
    Ok(snapshot)
}
