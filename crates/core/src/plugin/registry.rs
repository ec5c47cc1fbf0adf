//! Finding plugins and choosing the backend that runs.
//!
//! Plugins are files named `libgptoss_backend_<name>.so` (`.dylib` / `.dll` elsewhere) in, in
//! this order: the config's `plugin_dirs`, `$GPTOSS_PLUGIN_PATH` (a path list), and the folder
//! of the executable (and its `plugins/` subfolder). The first plugin of a name wins.

use std::path::{Path, PathBuf};

use super::loader::Plugin;
use crate::{Error, Result};

/// The file name a plugin of `name` has on this platform ("cuda-mxfp4" -> libgptoss_backend_cuda_mxfp4.so).
pub fn plugin_file_name(name: &str) -> String {
    format!(
        "{}gptoss_backend_{}{}",
        std::env::consts::DLL_PREFIX,
        name.replace('-', "_"),
        std::env::consts::DLL_SUFFIX
    )
}

fn is_plugin_file(p: &Path) -> bool {
    let prefix = format!("{}gptoss_backend_", std::env::consts::DLL_PREFIX);
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(std::env::consts::DLL_SUFFIX))
}

/// Folders searched for plugins, in priority order, without duplicates.
pub fn search_dirs(config_dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = config_dirs.to_vec();
    if let Some(p) = std::env::var_os("GPTOSS_PLUGIN_PATH") {
        dirs.extend(std::env::split_paths(&p).filter(|p| !p.as_os_str().is_empty()));
    }
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        dirs.push(exe_dir.join("plugins"));
        dirs.push(exe_dir);
    }
    let mut seen = Vec::new();
    dirs.retain(|d| {
        let key = d.canonicalize().unwrap_or_else(|_| d.clone());
        let new = !seen.contains(&key);
        seen.push(key);
        new
    });
    dirs
}

/// What a search found: plugins that loaded, and files that were refused with the reason.
#[derive(Debug, Default)]
pub struct Discovery {
    pub plugins: Vec<Plugin>,
    pub rejected: Vec<(PathBuf, String)>,
    pub searched: Vec<PathBuf>,
}

/// Load every plugin file in `dirs`. Refusals (not a library, wrong ABI, no entry symbol,
/// a name already taken by an earlier folder) are collected, never fatal.
pub fn discover(dirs: &[PathBuf]) -> Discovery {
    let mut d = Discovery {
        searched: dirs.to_vec(),
        ..Default::default()
    };
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_plugin_file(p))
            .collect();
        files.sort();
        for f in files {
            match Plugin::load(&f) {
                Ok(p) => match d.plugins.iter().find(|q| q.name == p.name) {
                    Some(first) => d.rejected.push((
                        f,
                        format!(
                            "plugin '{}' already loaded from {}",
                            p.name,
                            first.path.display()
                        ),
                    )),
                    None => d.plugins.push(p),
                },
                Err(e) => d.rejected.push((f, e.to_string())),
            }
        }
    }
    d
}

/// One backend's bid to run here: its best device score (0 = cannot) and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    pub name: String,
    pub score: u32,
    pub reason: String,
}

fn usable_list(offers: &[Offer]) -> String {
    let usable: Vec<String> = offers
        .iter()
        .filter(|o| o.score > 0)
        .map(|o| format!("{} (score {})", o.name, o.score))
        .collect();
    if usable.is_empty() {
        "none".into()
    } else {
        usable.join(", ")
    }
}

/// Pick the backend: `forced` by name, else the highest score, ties broken by the order of
/// `preference` (names not listed come after, alphabetically). Returns an index into `offers`.
pub fn choose(offers: &[Offer], forced: Option<&str>, preference: &[String]) -> Result<usize> {
    if let Some(name) = forced {
        let Some(i) = offers.iter().position(|o| o.name == name) else {
            let known: Vec<&str> = offers.iter().map(|o| o.name.as_str()).collect();
            return Err(Error::backend(
                name,
                format!(
                    "not found; backends found: {} (see `gptoss backends`)",
                    known.join(", ")
                ),
            ));
        };
        if offers[i].score == 0 {
            return Err(Error::backend(
                name,
                format!(
                    "cannot run here: {}; usable here: {}",
                    offers[i].reason,
                    usable_list(offers)
                ),
            ));
        }
        return Ok(i);
    }
    let rank = |o: &Offer| {
        preference
            .iter()
            .position(|p| *p == o.name)
            .unwrap_or(usize::MAX)
    };
    offers
        .iter()
        .enumerate()
        .filter(|(_, o)| o.score > 0)
        .max_by(|(_, a), (_, b)| {
            a.score
                .cmp(&b.score)
                .then(rank(b).cmp(&rank(a)))
                .then(b.name.cmp(&a.name))
        })
        .map(|(i, _)| i)
        .ok_or_else(|| {
            Error::backend(
                "auto",
                format!(
                    "no backend can run here: {}",
                    offers
                        .iter()
                        .map(|o| format!("{}: {}", o.name, o.reason))
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(name: &str, score: u32, reason: &str) -> Offer {
        Offer {
            name: name.into(),
            score,
            reason: reason.into(),
        }
    }

    #[test]
    fn highest_score_wins_and_preference_breaks_ties() {
        let offers = [
            offer("cpu", 1, "always"),
            offer("b", 50, "ok"),
            offer("a", 50, "ok"),
            offer("c", 10, "ok"),
        ];
        let pref = vec!["b".to_string(), "a".to_string()];
        assert_eq!(offers[choose(&offers, None, &pref).unwrap()].name, "b");
        let pref = vec!["a".to_string()];
        assert_eq!(offers[choose(&offers, None, &pref).unwrap()].name, "a");
        // not in the preference list: alphabetical
        assert_eq!(offers[choose(&offers, None, &[]).unwrap()].name, "a");
    }

    #[test]
    fn forced_backend_that_cannot_run_says_why_and_lists_the_usable() {
        let offers = [
            offer("cpu", 1, "always"),
            offer("cuda-mxfp4", 0, "needs sm_90+, found sm_86"),
        ];
        let e = choose(&offers, Some("cuda-mxfp4"), &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("needs sm_90+, found sm_86") && e.contains("cpu (score 1)"),
            "{e}"
        );
        let e = choose(&offers, Some("nope"), &[]).unwrap_err().to_string();
        assert!(e.contains("nope") && e.contains("cpu, cuda-mxfp4"), "{e}");
        assert_eq!(choose(&offers, Some("cpu"), &[]).unwrap(), 0);
    }

    #[test]
    fn nothing_usable_is_an_error_with_every_reason() {
        let offers = [offer("x", 0, "no GPU"), offer("y", 0, "no driver")];
        let e = choose(&offers, None, &[]).unwrap_err().to_string();
        assert!(e.contains("x: no GPU") && e.contains("y: no driver"), "{e}");
    }

    #[test]
    fn plugin_file_names_follow_the_platform() {
        let n = plugin_file_name("cuda-mxfp4");
        assert!(n.contains("gptoss_backend_cuda_mxfp4"));
        assert!(is_plugin_file(Path::new(&n)));
        assert!(!is_plugin_file(Path::new("libsomething_else.so")));
    }
}
