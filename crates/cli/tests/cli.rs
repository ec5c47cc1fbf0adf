//! `gptoss` as a user runs it: outputs, exit codes and error messages.

use std::path::PathBuf;
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

fn gptoss(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gptoss"))
        .args(args)
        .env_remove("GPTOSS_CONFIG")
        .output()
        .expect("runs gptoss")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn read_logits(path: &std::path::Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor("logits").unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::F32);
    (
        t.shape().to_vec(),
        t.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect(),
    )
}

#[test]
fn logits_prefill_and_incremental_agree() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("tiny-b");
    let tokens = "5,900,17,3,250,1000,42,42,7,8,9,10";
    let a = dir.path().join("a.safetensors");
    let b = dir.path().join("b.safetensors");
    let o = gptoss(&[
        "logits",
        "--model",
        model.to_str().unwrap(),
        "--backend",
        "cpu",
        "--tokens",
        tokens,
        "--out",
        a.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = gptoss(&[
        "logits",
        "-m",
        model.to_str().unwrap(),
        "--tokens",
        tokens,
        "--out",
        b.to_str().unwrap(),
        "--incremental",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (sa, la) = read_logits(&a);
    let (sb, lb) = read_logits(&b);
    assert_eq!(sa, vec![12, 1024]);
    assert_eq!(sa, sb);
    let max = la
        .iter()
        .zip(&lb)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(max < 1e-4, "prefill vs incremental differ by {max}");
    // no partial file left behind
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}

#[test]
fn generate_prints_token_ids() {
    let model = fixture("tiny-a");
    let o = gptoss(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--tokens",
        "1,2,3,4",
        "--max-tokens",
        "6",
        "--ignore-eos",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    let ids: Vec<u32> = out.trim().split(',').map(|t| t.parse().unwrap()).collect();
    assert_eq!(ids.len(), 6);
    assert!(ids.iter().all(|t| *t < 512));
}

#[test]
fn unknown_backend_is_refused_with_the_list() {
    let o = gptoss(&[
        "generate",
        "--model",
        fixture("tiny-a").to_str().unwrap(),
        "--tokens",
        "1",
        "--backend",
        "quantum",
    ]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("quantum") && e.contains("cpu"), "{e}");
}

#[test]
fn token_out_of_vocab_is_refused() {
    let o = gptoss(&[
        "generate",
        "--model",
        fixture("tiny-a").to_str().unwrap(),
        "--tokens",
        "1,512",
    ]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("512") && e.contains("vocab_size"), "{e}");
}

#[test]
fn malformed_tokens_are_refused() {
    let o = gptoss(&[
        "generate",
        "--model",
        fixture("tiny-a").to_str().unwrap(),
        "--tokens",
        "1,x2",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("'x2'"), "{}", stderr(&o));
}

#[test]
fn missing_model_names_the_path_and_the_fix() {
    let o = gptoss(&[
        "generate",
        "--model",
        "/nonexistent/gpt-oss",
        "--tokens",
        "1",
    ]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("/nonexistent/gpt-oss"), "{e}");
}

#[test]
fn bad_config_file_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "backend = \"cpu\"\nthreads = 2\nbackendz = 1\n").unwrap();
    let o = gptoss(&[
        "generate",
        "--model",
        fixture("tiny-a").to_str().unwrap(),
        "--tokens",
        "1",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("backendz") && e.contains("c.toml"), "{e}");
}

#[test]
fn context_limit_is_checked_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "max_context = 8\n").unwrap();
    let o = gptoss(&[
        "generate",
        "-m",
        fixture("tiny-a").to_str().unwrap(),
        "--tokens",
        "1,2,3",
        "--max-tokens",
        "10",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("max_context") && e.contains("13"), "{e}");
}

#[test]
fn help_explains_the_commands() {
    let o = gptoss(&["--help"]);
    assert!(o.status.success());
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(out.contains("logits") && out.contains("generate"), "{out}");
}

#[test]
fn bench_reports_speed_and_roofline_as_json() {
    let o = gptoss(&[
        "bench",
        "--synthetic",
        "tiny",
        "--layers",
        "2",
        "--prompt",
        "16,32",
        "--gen",
        "4",
        "--bandwidth-mib",
        "16",
        "--backend",
        "cpu",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    for key in [
        "\"backend\": \"cpu\"",
        "\"layers\": 2",
        "\"prompt_tokens\": 16",
        "\"prompt_tokens\": 32",
        "\"decode_tok_s\"",
        "\"roofline_fraction\"",
        "\"bandwidth_gb_s\"",
    ] {
        assert!(out.contains(key), "missing {key} in {out}");
    }
    assert!(!out.contains("null") && !out.contains("NaN"), "{out}");
}

#[test]
fn bench_measures_batches_and_split_models_on_the_cpu() {
    let o = gptoss(&[
        "bench",
        "--synthetic",
        "tiny",
        "--layers",
        "2",
        "--backend",
        "cpu",
        "--prompt",
        "16",
        "--gen",
        "4",
        "--batch",
        "1,3",
        "--tensor-parallel",
        "2",
        "--expert-parallel",
        "--bandwidth-mib",
        "8",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    for key in ["\"shards\": 2", "\"batch\": 1", "\"batch\": 3"] {
        assert!(out.contains(key), "missing {key} in {out}");
    }
    assert!(!out.contains("null") && !out.contains("NaN"), "{out}");
}

#[test]
fn bench_refuses_what_it_cannot_measure() {
    let o = gptoss(&["bench", "--synthetic", "tiny", "--batch", "1,0"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("--batch sizes must be at least 1"),
        "{}",
        stderr(&o)
    );
    let o = gptoss(&["bench", "--synthetic", "tiny", "--tensor-parallel", "3"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("key/value heads"), "{}", stderr(&o));
    let o = gptoss(&["bench", "--synthetic", "13b"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("20b, 120b or tiny"), "{}", stderr(&o));
    let o = gptoss(&["bench"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--synthetic"), "{}", stderr(&o));
}

#[test]
fn synth_writes_a_checkpoint_that_loads_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m");
    let o = gptoss(&[
        "synth",
        "--preset",
        "tiny",
        "--layers",
        "2",
        "--out",
        out.to_str().unwrap(),
        "--shard-gib",
        "0.004",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.join("model.safetensors.index.json").is_file());
    assert!(
        out.join("model-00000-of-00001.safetensors").is_file()
            || out.join("model-00000-of-00002.safetensors").is_file()
    );
    let o = gptoss(&[
        "generate",
        "-m",
        out.to_str().unwrap(),
        "--tokens",
        "1,2,3",
        "--max-tokens",
        "3",
        "--ignore-eos",
        "--backend",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        String::from_utf8(o.stdout)
            .unwrap()
            .trim()
            .split(',')
            .count(),
        3
    );
    let o = gptoss(&[
        "bench",
        "-m",
        out.to_str().unwrap(),
        "--prompt",
        "8",
        "--gen",
        "2",
        "--bandwidth-mib",
        "8",
        "--json",
        "--backend",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8(o.stdout).unwrap().contains("\"load_s\""));
}
