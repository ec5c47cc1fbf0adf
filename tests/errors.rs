//! Bad input through the library: each refusal names the thing and the problem.

use std::path::Path;

use gptoss_backend_cpu::cpu_backend;
use gptoss_e2e::fixture_dir;
use gptoss_models::{LogitsWanted, Model};

fn copy_fixture(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture_dir(name)).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    dir
}

fn load_err(dir: &Path) -> String {
    match Model::load(dir, Box::new(cpu_backend(1)), &mut |_, _| {}) {
        Ok(_) => panic!("{} loaded but should not", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_config_is_named() {
    let d = copy_fixture("tiny-b");
    std::fs::remove_file(d.path().join("config.json")).unwrap();
    let e = load_err(d.path());
    assert!(e.contains("config.json"), "{e}");
}

#[test]
fn missing_shard_is_named() {
    let d = copy_fixture("tiny-a");
    std::fs::remove_file(d.path().join("model-00001-of-00001.safetensors")).unwrap();
    let e = load_err(d.path());
    assert!(e.contains("model-00001-of-00001.safetensors"), "{e}");
}

#[test]
fn truncated_checkpoint_is_named() {
    let d = copy_fixture("tiny-b");
    let f = d.path().join("model.safetensors");
    let len = std::fs::metadata(&f).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
    file.set_len(len / 2).unwrap();
    let e = load_err(d.path());
    assert!(
        e.contains("model.safetensors") && e.contains("truncated"),
        "{e}"
    );
}

#[test]
fn config_that_disagrees_with_the_tensors_names_the_tensor() {
    let d = copy_fixture("tiny-b");
    let cfg = std::fs::read_to_string(d.path().join("config.json")).unwrap();
    std::fs::write(
        d.path().join("config.json"),
        cfg.replace("\"num_local_experts\": 8", "\"num_local_experts\": 6"),
    )
    .unwrap();
    let e = load_err(d.path());
    assert!(
        e.contains("mlp.router.weight") || e.contains("experts"),
        "{e}"
    );
    assert!(
        e.contains('6') && e.contains('8'),
        "expected vs found shapes: {e}"
    );
}

#[test]
fn token_id_beyond_vocab_is_refused_and_the_session_survives() {
    let mut model = Model::load(
        &fixture_dir("tiny-b"),
        Box::new(cpu_backend(1)),
        &mut |_, _| {},
    )
    .unwrap();
    let mut s = model.new_session(8).unwrap();
    let e = model
        .forward(&mut s, &[1, 2, 5000], LogitsWanted::Last)
        .unwrap_err()
        .to_string();
    assert!(e.contains("5000") && e.contains("1024"), "{e}");
    assert_eq!(s.len(), 0);
    model
        .forward(&mut s, &[1, 2, 3], LogitsWanted::Last)
        .unwrap();
    assert_eq!(s.len(), 3);
}

#[test]
fn prompt_longer_than_the_context_is_refused() {
    let mut model = Model::load(
        &fixture_dir("tiny-b"),
        Box::new(cpu_backend(1)),
        &mut |_, _| {},
    )
    .unwrap();
    let mut s = model.new_session(4).unwrap();
    let e = model
        .forward(&mut s, &[1, 2, 3, 4, 5], LogitsWanted::Last)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("context") && e.contains('5') && e.contains('4'),
        "{e}"
    );
}
