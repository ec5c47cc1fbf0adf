//! `gptoss backends` and backend selection as a user sees them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const FAKE: &str = "GPTOSS_FAKE_CUDA_DEVICES";

fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_gptoss"))
}

/// gptoss with a clean environment: no config, no extra plugin folder, real GPU detection.
fn gptoss_cmd(exe: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(exe);
    c.args(args)
        .env_remove("GPTOSS_CONFIG")
        .env_remove("GPTOSS_PLUGIN_PATH")
        .env_remove(FAKE)
        .env_remove("RUST_LOG");
    c
}

fn run(mut c: Command) -> (String, String) {
    let o: Output = c.output().expect("runs gptoss");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "gptoss failed:\n{out}\n{err}");
    (out, err)
}

fn json(c: Command) -> Value {
    let (out, _) = run(c);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"))
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

/// The cpu plugin cargo built beside the gptoss binary (it is a cdylib dependency of the cli).
fn cpu_plugin() -> PathBuf {
    let name = format!(
        "{}gptoss_backend_cpu{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let dir = exe().parent().unwrap().to_path_buf();
    [dir.join(&name), dir.join("deps").join(&name)]
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not built next to {}", exe().display()))
}

fn backends<'a>(v: &'a Value, name: &str) -> Vec<&'a Value> {
    v["backends"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["name"] == name)
        .collect()
}

/// The candidate (used for selection) of `name`.
fn candidate<'a>(v: &'a Value, name: &str) -> &'a Value {
    backends(v, name)
        .into_iter()
        .find(|b| b["candidate"] == true)
        .unwrap_or_else(|| panic!("no candidate {name} in {v:#}"))
}

#[test]
fn lists_the_cpu_and_says_why_there_is_no_cuda_device() {
    let (out, _) = run(gptoss_cmd(&exe(), &["backends"]));
    assert!(out.contains("Backends:") && out.contains("cpu"), "{out}");
    assert!(out.contains("Auto-selection picks: cpu (score 1)"), "{out}");
    assert!(out.contains("Plugin folders searched"), "{out}");
    // the folder of the executable is always searched
    assert!(
        out.contains(&exe().parent().unwrap().display().to_string()),
        "{out}"
    );
    let gpus = &out[out.find("GPUs:").expect("GPUs section")..];
    match gptoss_gpu_detect::cuda_devices() {
        // this machine: no driver, and the output says so
        Err(why) => {
            assert!(gpus.contains(&format!("no CUDA devices: {why}")), "{gpus}");
            assert!(why.contains("NVIDIA"), "{why}");
        }
        // a GPU machine: every device with its capability
        Ok(devs) => {
            for d in devs {
                assert!(gpus.contains(&d.name) && gpus.contains(&d.sm()), "{gpus}");
            }
        }
    }
}

#[test]
fn json_has_the_same_content_as_the_table() {
    let (text, _) = run(gptoss_cmd(&exe(), &["backends"]));
    let v = json(gptoss_cmd(&exe(), &["backends", "--json"]));
    assert_eq!(v["auto"]["backend"], "cpu");
    assert_eq!(v["configured"], "auto");
    let cpu = candidate(&v, "cpu");
    assert_eq!(cpu["score"], 1);
    assert!(!cpu["devices"].as_array().unwrap().is_empty());
    // every backend of the JSON is in the table, with its path and each device's reason
    for b in v["backends"].as_array().unwrap() {
        assert!(text.contains(b["name"].as_str().unwrap()), "{b}");
        if let Some(p) = b["path"].as_str() {
            assert!(text.contains(p), "{p} missing from\n{text}");
            assert_eq!(b["abi_version"], 2);
        }
        for d in b["devices"].as_array().unwrap() {
            assert!(text.contains(d["reason"].as_str().unwrap()), "{d}");
        }
    }
    for f in v["searched"].as_array().unwrap() {
        assert!(text.contains(f["path"].as_str().unwrap()), "{f}");
    }
    for r in v["rejected"].as_array().unwrap() {
        assert!(text.contains(r["path"].as_str().unwrap()), "{r}");
    }
    match gptoss_gpu_detect::cuda_devices() {
        Err(why) => {
            assert_eq!(v["gpus"]["cuda_error"], why.as_str());
            assert_eq!(v["gpus"]["cuda"], Value::Array(vec![]));
        }
        Ok(devs) => assert_eq!(v["gpus"]["cuda"].as_array().unwrap().len(), devs.len()),
    }
}

#[test]
fn plugin_path_folder_is_searched_first() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join(cpu_plugin().file_name().unwrap());
    std::fs::copy(cpu_plugin(), &copy).unwrap();
    let mut c = gptoss_cmd(&exe(), &["backends", "--json"]);
    c.env("GPTOSS_PLUGIN_PATH", dir.path());
    let v = json(c);
    let cpu = candidate(&v, "cpu");
    assert_eq!(cpu["path"], copy.to_str().unwrap(), "{v:#}");
    assert_eq!(cpu["source"], "plugin");
    assert_eq!(v["searched"][0]["path"], dir.path().to_str().unwrap());
    // the copy cargo built beside the executable comes later and is refused as a duplicate
    let beside = exe().parent().unwrap().join(copy.file_name().unwrap());
    if beside.is_file() {
        let r = v["rejected"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["path"] == beside.to_str().unwrap())
            .unwrap_or_else(|| panic!("{v:#}"));
        assert!(
            r["reason"].as_str().unwrap().contains("already loaded"),
            "{r}"
        );
    }
    // the table shows the path too
    let mut c = gptoss_cmd(&exe(), &["backends"]);
    c.env("GPTOSS_PLUGIN_PATH", dir.path());
    let (out, _) = run(c);
    assert!(out.contains(copy.to_str().unwrap()), "{out}");

    // and a model runs on that plugin instance
    let mut c = gptoss_cmd(
        &exe(),
        &[
            "generate",
            "-m",
            fixture("tiny-a").to_str().unwrap(),
            "--tokens",
            "1,2,3",
            "--max-tokens",
            "2",
            "--ignore-eos",
        ],
    );
    c.env("GPTOSS_PLUGIN_PATH", dir.path())
        .env("RUST_LOG", "gptoss=debug");
    let (out, err) = run(c);
    assert_eq!(out.trim().split(',').count(), 2, "{out}");
    assert!(
        err.contains(&format!("using plugin cpu from {}", copy.display())),
        "{err}"
    );
}

#[test]
fn config_plugin_dirs_are_searched_before_the_environment() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    std::fs::copy(
        cpu_plugin(),
        a.path().join(cpu_plugin().file_name().unwrap()),
    )
    .unwrap();
    let cfg = b.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!("plugin_dirs = [{:?}]\n", a.path().to_str().unwrap()),
    )
    .unwrap();
    let mut c = gptoss_cmd(&exe(), &["backends", "--json", "--config"]);
    c.arg(&cfg).env("GPTOSS_PLUGIN_PATH", b.path());
    let v = json(c);
    assert_eq!(v["searched"][0]["path"], a.path().to_str().unwrap());
    assert_eq!(v["searched"][1]["path"], b.path().to_str().unwrap());
    assert!(candidate(&v, "cpu")["path"]
        .as_str()
        .unwrap()
        .starts_with(a.path().to_str().unwrap()));
}

#[test]
fn built_in_cpu_is_used_when_no_plugin_is_found() {
    // A gptoss binary alone in a folder: nothing beside it, so the linked-in cpu backend runs.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let lone = dir.path().join(exe().file_name().unwrap());
    if std::fs::hard_link(exe(), &lone).is_err() {
        std::fs::copy(exe(), &lone).unwrap();
    }
    let v = json(gptoss_cmd(&lone, &["backends", "--json"]));
    let cpu = candidate(&v, "cpu");
    assert_eq!(cpu["source"], "built-in");
    assert_eq!(cpu["path"], Value::Null);
    assert_eq!(v["auto"]["backend"], "cpu");
    assert_eq!(backends(&v, "cpu").len(), 1, "{v:#}");

    let mut c = gptoss_cmd(
        &lone,
        &[
            "generate",
            "-m",
            fixture("tiny-a").to_str().unwrap(),
            "--tokens",
            "1,2",
            "--max-tokens",
            "1",
            "--ignore-eos",
        ],
    );
    c.env("RUST_LOG", "gptoss=debug");
    let (_, err) = run(c);
    assert!(err.contains("using the built-in cpu backend"), "{err}");
}

/// `gptoss generate` of one token on tiny-a with `extra` flags, which must fail: its stderr.
fn generate_fails(extra: &[&str]) -> String {
    let model = fixture("tiny-a");
    let mut args = vec!["generate", "-m", model.to_str().unwrap(), "--tokens", "1"];
    args.extend_from_slice(extra);
    let o = gptoss_cmd(&exe(), &args).output().unwrap();
    assert!(!o.status.success(), "gptoss {args:?} should fail");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn unknown_backend_error_lists_the_available_ones() {
    let e = generate_fails(&["--backend", "nope"]);
    assert!(
        e.contains("nope")
            && e.contains("not found")
            && e.contains("backends found: ")
            && e.contains("cpu"),
        "{e}"
    );
    assert!(e.contains("gptoss backends"), "{e}");
}

#[test]
fn dequantize_on_a_backend_without_it_is_refused() {
    let e = generate_fails(&["--backend", "cpu", "--dequantize"]);
    assert!(
        e.contains("--dequantize") && e.contains("CUDA backends") && e.contains("cpu"),
        "{e}"
    );
}

#[test]
fn fake_cuda_device_shows_in_the_gpus_section() {
    let fake = r#"[{"name": "NVIDIA GeForce RTX 3090", "compute_capability": [8, 6],
                    "memory_bytes": 25769803776, "driver_version": "12.8"}]"#;
    let mut c = gptoss_cmd(&exe(), &["backends"]);
    c.env(FAKE, fake);
    let (out, _) = run(c);
    let gpus = &out[out.find("GPUs:").unwrap()..];
    assert!(
        gpus.contains("CUDA 0: NVIDIA GeForce RTX 3090, sm_86, 24.0 GiB, driver 12.8"),
        "{gpus}"
    );
    // The workspace builds the cuda-bf16 plugin next to gptoss; the line says so when it is
    // not there.
    assert!(gpus.contains("suits: cuda-bf16"), "{gpus}");
    let installed = exe()
        .parent()
        .is_some_and(|d| d.join("libgptoss_backend_cuda_bf16.so").exists());
    assert_eq!(
        gpus.contains("(the cuda-bf16 plugin is not installed)"),
        !installed,
        "{gpus}"
    );
    assert!(
        gpus.contains("needs sm_90+ (Hopper/Blackwell), found sm_86; try --backend cuda-bf16"),
        "{gpus}"
    );

    let mut c = gptoss_cmd(&exe(), &["backends", "--json"]);
    c.env(FAKE, fake);
    let v = json(c);
    let d = &v["gpus"]["cuda"][0];
    assert_eq!(d["name"], "NVIDIA GeForce RTX 3090");
    assert_eq!(d["compute_capability"], serde_json::json!([8, 6]));
    assert_eq!(d["memory_bytes"], 25769803776u64);
    assert_eq!(v["gpus"]["cuda_error"], Value::Null);
    assert_eq!(v["gpus"]["best_by_rules"], "cuda-bf16");
    // auto-selection follows the installed plugins' probes: cuda-bf16 (built next to gptoss
    // by the workspace) scores 90 on the simulated sm_86, else the cpu runs
    assert_eq!(
        v["auto"]["backend"],
        if installed { "cuda-bf16" } else { "cpu" }
    );

    // a Hopper card suits cuda-mxfp4
    let mut c = gptoss_cmd(&exe(), &["backends", "--json"]);
    c.env(
        FAKE,
        r#"[{"name": "NVIDIA H100 80GB HBM3", "compute_capability": [9, 0]}]"#,
    );
    assert_eq!(json(c)["gpus"]["best_by_rules"], "cuda-mxfp4");
}

#[test]
fn a_model_too_big_for_the_gpu_is_refused_before_loading() {
    // A dev-dependency of this crate, so cargo builds the plugin (into deps/) for this test.
    let name = "libgptoss_backend_cuda_bf16.so";
    let bin = exe().parent().unwrap().to_path_buf();
    let dir = [bin.clone(), bin.join("deps")]
        .into_iter()
        .find(|d| d.join(name).is_file())
        .unwrap_or_else(|| panic!("{name} not built next to {}", bin.display()));
    // A 2 GiB Turing card cannot hold even two layers of gpt-oss-20b with its 1.2 GB
    // embedding and unembedding: refused from the estimate, before any weight is built
    // (and before the missing driver would be noticed).
    let fake = r#"[{"name": "Tesla T4", "compute_capability": [7, 5],
                    "memory_bytes": 2147483648, "driver_version": "12.8"}]"#;
    let mut c = gptoss_cmd(
        &exe(),
        &[
            "bench",
            "--synthetic",
            "20b",
            "--layers",
            "2",
            "--backend",
            "cuda-bf16",
        ],
    );
    c.env(FAKE, fake).env("GPTOSS_PLUGIN_PATH", &dir);
    let o = c.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("not enough memory on cuda-bf16 device 0 (Tesla T4, 2.00 GiB)")
            && err.contains("--tensor-parallel"),
        "{err}"
    );
    assert!(
        !err.contains("building synthetic"),
        "refused before loading: {err}"
    );
}

#[test]
fn a_plugin_decodes_the_same_tokens_as_the_built_in_backend() {
    // Through the plugin ABI a repeated decode graph is passed on as it was laid out the step
    // before (the loader keeps a copy and its C form); every step must still run the graph it
    // was given: 24 greedy tokens equal the linked-in cpu backend's.
    let generate = |exe: &Path, plugins: Option<&Path>| {
        let mut c = gptoss_cmd(
            exe,
            &[
                "generate",
                "-m",
                fixture("tiny-a").to_str().unwrap(),
                "--tokens",
                "5,9,2,7",
                "--max-tokens",
                "24",
                "--ignore-eos",
            ],
        );
        c.env("RUST_LOG", "gptoss=debug");
        if let Some(dir) = plugins {
            c.env("GPTOSS_PLUGIN_PATH", dir);
        }
        run(c)
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        cpu_plugin(),
        dir.path().join(cpu_plugin().file_name().unwrap()),
    )
    .unwrap();
    let (via_plugin, err) = generate(&exe(), Some(dir.path()));
    assert!(err.contains("using plugin cpu"), "{err}");
    let alone = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let lone = alone.path().join(exe().file_name().unwrap());
    if std::fs::hard_link(exe(), &lone).is_err() {
        std::fs::copy(exe(), &lone).unwrap();
    }
    let (built_in, err) = generate(&lone, None);
    assert!(err.contains("using the built-in cpu backend"), "{err}");
    assert_eq!(via_plugin.trim().split(',').count(), 24, "{via_plugin}");
    assert_eq!(via_plugin.trim(), built_in.trim());
}
