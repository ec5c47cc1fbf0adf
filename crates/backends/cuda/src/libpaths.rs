//! Where NVIDIA's dlopen'd libraries (NVRTC, cuBLAS, NCCL) may live besides the loader path: the
//! CUDA toolkit's folders and the folders of PyTorch's nvidia-* wheels.

use std::path::{Path, PathBuf};

/// CUDA_HOME, CUDA_PATH and CUDA_ROOT, those that are set.
pub fn cuda_homes() -> Vec<PathBuf> {
    ["CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"]
        .iter()
        .filter_map(|v| std::env::var_os(v).map(PathBuf::from))
        .collect()
}

/// The toolkit's library folders: `homes`' lib64 and lib, /usr/local/cuda, then the versioned
/// /usr/local/cuda-X.Y installs, newest first.
pub fn toolkit_dirs(homes: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for home in homes {
        dirs.push(home.join("lib64"));
        dirs.push(home.join("lib"));
    }
    dirs.push("/usr/local/cuda/lib64".into());
    dirs.push("/usr/local/cuda/targets/x86_64-linux/lib".into());
    let mut versioned = children_named(Path::new("/usr/local"), "cuda-");
    versioned.reverse();
    dirs.extend(versioned.into_iter().map(|p| p.join("lib64")));
    dirs
}

/// `<root>/python3*/{dist,site}-packages/<sub>` for each root and each of `subs` (the python
/// folders in name order).
pub fn wheel_dirs(roots: &[&Path], subs: &[&str]) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for root in roots {
        for py in children_named(root, "python3") {
            for pkgs in ["dist-packages", "site-packages"] {
                dirs.extend(subs.iter().map(|sub| py.join(pkgs).join(sub)));
            }
        }
    }
    dirs
}

/// The first six candidates tried, for a not-found message.
pub fn first_tried(tried: &[PathBuf]) -> String {
    tried
        .iter()
        .take(6)
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The entries of `dir` whose names start with `prefix`, sorted; none if it cannot be read.
fn children_named(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wheel_dirs_cover_every_python_and_both_package_folders() {
        let root = std::env::temp_dir().join(format!("gptoss-libpaths-{}", std::process::id()));
        for py in ["python3.12", "python3.10", "perl5"] {
            std::fs::create_dir_all(root.join(py)).unwrap();
        }
        let d = wheel_dirs(&[root.as_path()], &["nvidia/x/lib"]);
        std::fs::remove_dir_all(&root).unwrap();
        let want: Vec<PathBuf> = ["python3.10", "python3.12"]
            .iter()
            .flat_map(|py| {
                ["dist-packages", "site-packages"]
                    .map(|p| root.join(py).join(p).join("nvidia/x/lib"))
            })
            .collect();
        assert_eq!(d, want);
    }

    #[test]
    fn toolkit_dirs_start_with_the_homes() {
        let d = toolkit_dirs(&[PathBuf::from("/opt/cuda")]);
        assert_eq!(d[0], PathBuf::from("/opt/cuda/lib64"));
        assert_eq!(d[1], PathBuf::from("/opt/cuda/lib"));
        assert!(d.contains(&PathBuf::from("/usr/local/cuda/lib64")));
    }
}
