//! Checkpoint loading (safetensors mmap, sharded and single-file) and hub id resolution.

use std::path::{Path, PathBuf};

use gptoss_core::{DType, Error};
use gptoss_models::checkpoint::Checkpoint;
use gptoss_models::hub::resolve_model_dir;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

/// A copy of a fixture's checkpoint files (not reference.safetensors) in a fresh tempdir.
fn copy_fixture(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let p = entry.unwrap().path();
        let f = p.file_name().unwrap().to_str().unwrap().to_string();
        if f == "reference.safetensors" {
            continue;
        }
        std::fs::copy(&p, tmp.path().join(&f)).unwrap();
    }
    tmp
}

fn err_of<T: std::fmt::Debug>(r: gptoss_core::Result<T>) -> Error {
    r.expect_err("expected an error")
}

const SHARD0: &str = "model-00000-of-00001.safetensors";
const SHARD1: &str = "model-00001-of-00001.safetensors";

fn header_len(bytes: &[u8]) -> usize {
    u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize
}

#[test]
fn opens_sharded_fixture() {
    let dir = fixture("tiny-a");
    let ck = Checkpoint::open(&dir).unwrap();
    assert_eq!(ck.dir(), dir.as_path());
    assert_eq!(ck.names().len(), 19 * 3 + 3);
    assert_eq!(ck.files().len(), 2);

    let names = ck.names();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);

    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let total = index["metadata"]["total_size"].as_u64().unwrap();
    assert_eq!(total, 332080);
    assert_eq!(ck.total_bytes(), total);
    // Every name in the index, and only those.
    let map = index["weight_map"].as_object().unwrap();
    assert_eq!(map.len(), names.len());
    assert!(map.keys().all(|k| ck.contains(k)));

    let t = ck
        .expect(
            "model.layers.0.mlp.experts.gate_up_proj_blocks",
            DType::Mxfp4Blocks,
            &[4, 192, 2, 16],
        )
        .unwrap();
    assert_eq!(t.desc.dtype, DType::Mxfp4Blocks);
    assert_eq!(t.desc.shape.dims(), &[4, 192, 2, 16]);
    assert_eq!(t.bytes.len(), 4 * 192 * 2 * 16);
    assert_eq!(t.file, dir.join(SHARD0).as_path());
    assert_eq!(t.name, "model.layers.0.mlp.experts.gate_up_proj_blocks");

    // The bytes are the ones at the header's offsets in the file.
    let raw = std::fs::read(dir.join(SHARD0)).unwrap();
    let start = 8 + header_len(&raw) + 131480;
    assert_eq!(t.bytes, &raw[start..start + 24576]);

    let s = ck
        .expect(
            "model.layers.0.mlp.experts.gate_up_proj_scales",
            DType::E8m0Scales,
            &[4, 192, 2],
        )
        .unwrap();
    assert_eq!(s.desc.dtype, DType::E8m0Scales);
    // As stored, the same tensors are plain U8.
    let g = ck
        .get("model.layers.0.mlp.experts.gate_up_proj_blocks")
        .unwrap();
    assert_eq!(g.desc.dtype, DType::U8);

    let e = ck.get("model.embed_tokens.weight").unwrap();
    assert_eq!(e.desc.dtype, DType::BF16);
    assert_eq!(e.desc.shape.dims(), &[512, 64]);
    assert_eq!(e.bytes.len(), 512 * 64 * 2);
    let q = ck
        .expect(
            "model.layers.0.self_attn.q_proj.weight",
            DType::BF16,
            &[64, 64],
        )
        .unwrap();
    assert_eq!(q.bytes.len(), 64 * 64 * 2);

    // Tensors of the second shard come from the second file.
    let in_second: Vec<&str> = map
        .iter()
        .filter(|(_, v)| v.as_str() == Some(SHARD1))
        .map(|(k, _)| k.as_str())
        .collect();
    assert!(!in_second.is_empty());
    for n in in_second {
        assert_eq!(ck.get(n).unwrap().file, dir.join(SHARD1).as_path(), "{n}");
    }
}

#[test]
fn opens_single_file_fixture() {
    let dir = fixture("tiny-b");
    let ck = Checkpoint::open(&dir).unwrap();
    assert_eq!(ck.names().len(), 19 * 4 + 3);
    assert_eq!(ck.files(), vec![dir.join("model.safetensors").as_path()]);
    let size = std::fs::metadata(dir.join("model.safetensors"))
        .unwrap()
        .len();
    let raw = std::fs::read(dir.join("model.safetensors")).unwrap();
    assert_eq!(ck.total_bytes(), size - 8 - header_len(&raw) as u64);

    let t = ck.get("lm_head.weight").unwrap();
    assert_eq!(t.desc.dtype, DType::BF16);
    assert_eq!(t.desc.shape.dims(), &[1024, 128]);
    let start = 8 + header_len(&raw);
    assert_eq!(t.bytes, &raw[start..start + 262144]);
    let b = ck
        .expect(
            "model.layers.3.mlp.experts.down_proj_blocks",
            DType::Mxfp4Blocks,
            &[8, 128, 2, 16],
        )
        .unwrap();
    assert_eq!(b.bytes.len(), 8 * 128 * 2 * 16);
}

#[test]
fn missing_shard() {
    let tmp = copy_fixture("tiny-a");
    std::fs::remove_file(tmp.path().join(SHARD1)).unwrap();
    let e = err_of(Checkpoint::open(tmp.path()));
    assert!(matches!(e, Error::File { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains(SHARD1), "{msg}");
    assert!(msg.contains("model.safetensors.index.json"), "{msg}");
    assert!(msg.contains("missing"), "{msg}");
}

#[test]
fn malformed_index() {
    let tmp = copy_fixture("tiny-a");
    std::fs::write(
        tmp.path().join("model.safetensors.index.json"),
        "{\"weight_map\": {\"a\": ",
    )
    .unwrap();
    let e = err_of(Checkpoint::open(tmp.path()));
    assert!(matches!(e, Error::Format { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("model.safetensors.index.json"), "{msg}");
    assert!(msg.contains("EOF while parsing"), "{msg}");
}

#[test]
fn truncated_header() {
    // Cut inside the JSON header: the length prefix promises more than the file has.
    let tmp = copy_fixture("tiny-b");
    let p = tmp.path().join("model.safetensors");
    let raw = std::fs::read(&p).unwrap();
    let n = header_len(&raw);
    std::fs::write(&p, &raw[..1000]).unwrap();
    let e = err_of(Checkpoint::open(tmp.path()));
    assert!(matches!(e, Error::Format { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("model.safetensors: truncated"), "{msg}");
    assert!(msg.contains(&format!("{n} bytes of header")), "{msg}");
    assert!(msg.contains("has only 1000"), "{msg}");

    // Shorter than the length prefix itself.
    std::fs::write(&p, &raw[..5]).unwrap();
    let msg = err_of(Checkpoint::open(tmp.path())).to_string();
    assert!(msg.contains("truncated: the file has 5 bytes"), "{msg}");
}

#[test]
fn truncated_data() {
    // Cut inside the tensor data: the header's last data_offsets lie past the end of the file.
    let tmp = copy_fixture("tiny-a");
    let p = tmp.path().join(SHARD1);
    let raw = std::fs::read(&p).unwrap();
    let cut = raw.len() - 1234;
    std::fs::write(&p, &raw[..cut]).unwrap();
    let e = err_of(Checkpoint::open(tmp.path()));
    assert!(matches!(e, Error::Format { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains(&format!("{SHARD1}: truncated")), "{msg}");
    assert!(msg.contains(&format!("needs {} bytes", raw.len())), "{msg}");
    assert!(msg.contains(&format!("has only {cut}")), "{msg}");
    assert!(msg.contains("1234 missing"), "{msg}");
}

#[test]
fn garbage_header() {
    let tmp = copy_fixture("tiny-b");
    let p = tmp.path().join("model.safetensors");
    let mut bytes = 20u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"this is not json !!!");
    bytes.extend_from_slice(&[0u8; 64]);
    std::fs::write(&p, &bytes).unwrap();
    let e = err_of(Checkpoint::open(tmp.path()));
    assert!(matches!(e, Error::Format { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("model.safetensors: header is not valid safetensors JSON"),
        "{msg}"
    );

    // A Git LFS pointer in place of the weights.
    std::fs::write(
        &p,
        "version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 1636904\n",
    )
    .unwrap();
    let msg = err_of(Checkpoint::open(tmp.path())).to_string();
    assert!(msg.contains("Git LFS pointer"), "{msg}");
}

#[test]
fn index_names_tensor_absent_from_shard() {
    let tmp = copy_fixture("tiny-a");
    let ip = tmp.path().join("model.safetensors.index.json");
    let mut index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&ip).unwrap()).unwrap();
    index["weight_map"]["model.layers.0.self_attn.ghost"] = SHARD0.into();
    std::fs::write(&ip, serde_json::to_string(&index).unwrap()).unwrap();
    let e = err_of(Checkpoint::open(tmp.path()));
    assert!(matches!(e, Error::Format { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("model.safetensors.index.json"), "{msg}");
    assert!(msg.contains("'model.layers.0.self_attn.ghost'"), "{msg}");
    assert!(msg.contains(&format!("mapped to {SHARD0}")), "{msg}");
    assert!(
        msg.contains(&tmp.path().join(SHARD0).display().to_string()),
        "{msg}"
    );
}

#[test]
fn wrong_dtype_shape_and_missing_tensor() {
    let dir = fixture("tiny-a");
    let ck = Checkpoint::open(&dir).unwrap();
    let shard0 = dir.join(SHARD0).display().to_string();

    let e = err_of(ck.expect(
        "model.layers.0.self_attn.q_proj.weight",
        DType::F32,
        &[64, 64],
    ));
    assert!(matches!(e, Error::Tensor { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("tensor 'model.layers.0.self_attn.q_proj.weight'"),
        "{msg}"
    );
    assert!(msg.contains("wrong dtype"), "{msg}");
    assert!(msg.contains(&shard0), "{msg}");
    assert!(
        msg.contains("expected F32 [64, 64], found BF16 [64, 64]"),
        "{msg}"
    );

    // A BF16 tensor is not MXFP4 blocks.
    let msg = err_of(ck.expect("model.norm.weight", DType::Mxfp4Blocks, &[64])).to_string();
    assert!(
        msg.contains("expected U8 (MXFP4 blocks (U8)) [64], found BF16 [64]"),
        "{msg}"
    );

    let e = err_of(ck.expect(
        "model.layers.0.mlp.experts.gate_up_proj_blocks",
        DType::Mxfp4Blocks,
        &[4, 192, 90, 16],
    ));
    assert!(matches!(e, Error::Tensor { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("wrong shape"), "{msg}");
    assert!(msg.contains(&shard0), "{msg}");
    assert!(
        msg.contains("expected U8 (MXFP4 blocks (U8)) [4, 192, 90, 16], found U8 [4, 192, 2, 16]"),
        "{msg}"
    );

    let e = err_of(ck.expect("model.layers.7.self_attn.sinks", DType::BF16, &[4]));
    assert!(matches!(e, Error::Tensor { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("tensor 'model.layers.7.self_attn.sinks'"),
        "{msg}"
    );
    assert!(
        msg.contains(&format!(
            "not found in {} (checked 60 tensors in 2 files)",
            dir.display()
        )),
        "{msg}"
    );
    assert!(err_of(ck.get("lm_head.bias"))
        .to_string()
        .contains("checked 60 tensors in 2 files"));
}

#[test]
fn empty_and_missing_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let e = err_of(Checkpoint::open(tmp.path()));
    assert!(matches!(e, Error::File { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.starts_with(&tmp.path().display().to_string()), "{msg}");
    assert!(msg.contains("model.safetensors.index.json"), "{msg}");
    assert!(msg.contains("model.safetensors (single file)"), "{msg}");

    let gone = tmp.path().join("nope");
    let e = err_of(Checkpoint::open(&gone));
    assert!(matches!(e, Error::File { .. }), "{e:?}");
    assert!(
        e.to_string().contains("nope: model folder does not exist"),
        "{e}"
    );
}

/// Env vars are process-global: every hub test is in this one function.
#[test]
fn hub_resolution() {
    let home = tempfile::tempdir().unwrap();
    let hash = "0123456789abcdef0123456789abcdef01234567";
    let repo = home.path().join("hub").join("models--owner--name");
    let snap = repo.join("snapshots").join(hash);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    // Written with a trailing newline, as a hand-edited ref would be.
    std::fs::write(repo.join("refs").join("main"), format!("{hash}\n")).unwrap();
    std::fs::write(snap.join("config.json"), "{}").unwrap();
    // A second, older snapshot reachable only by its hash.
    let old = repo.join("snapshots").join("feedface");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(old.join("config.json"), "{}").unwrap();

    // SAFETY (edition 2024 marks these unsafe; in 2021 they are safe): the hub tests run in this
    // single test function, and no other test in this binary reads these variables.
    std::env::remove_var("HF_HUB_CACHE");
    std::env::set_var("HF_HOME", home.path());

    assert_eq!(resolve_model_dir("owner/name").unwrap(), snap);
    assert_eq!(resolve_model_dir("owner/name@main").unwrap(), snap);
    assert_eq!(resolve_model_dir("owner/name@feedface").unwrap(), old);

    // A local folder wins and is returned as given.
    let local = fixture("tiny-a");
    assert_eq!(resolve_model_dir(local.to_str().unwrap()).unwrap(), local);
    assert_eq!(
        resolve_model_dir(local.join("config.json").to_str().unwrap()).unwrap(),
        local
    );

    // An unknown id: the message names the id, both places looked, and the fix.
    let e = err_of(resolve_model_dir("someone/unknown-model"));
    assert!(matches!(e, Error::File { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.starts_with("someone/unknown-model: "), "{msg}");
    let cwd = std::env::current_dir().unwrap();
    assert!(
        msg.contains(&cwd.join("someone/unknown-model").display().to_string()),
        "{msg}"
    );
    assert!(
        msg.contains(
            &home
                .path()
                .join("hub")
                .join("models--someone--unknown-model")
                .display()
                .to_string()
        ),
        "{msg}"
    );
    assert!(
        msg.contains("huggingface-cli download someone/unknown-model"),
        "{msg}"
    );
    assert!(
        msg.contains("gptoss download someone/unknown-model"),
        "{msg}"
    );

    // A ref pointing to a snapshot that is gone.
    std::fs::write(repo.join("refs").join("main"), "deadbeef").unwrap();
    let msg = err_of(resolve_model_dir("owner/name")).to_string();
    assert!(msg.contains("deadbeef"), "{msg}");
    assert!(msg.contains("does not exist"), "{msg}");

    // Not an id and not a folder.
    let msg = err_of(resolve_model_dir("./no/such/dir")).to_string();
    assert!(msg.contains("no such model folder"), "{msg}");

    // HF_HUB_CACHE takes precedence over HF_HOME.
    std::fs::write(repo.join("refs").join("main"), hash).unwrap();
    let other = tempfile::tempdir().unwrap();
    std::env::set_var("HF_HUB_CACHE", other.path());
    let msg = err_of(resolve_model_dir("owner/name")).to_string();
    assert!(
        msg.contains(
            &other
                .path()
                .join("models--owner--name")
                .display()
                .to_string()
        ),
        "{msg}"
    );
    std::env::set_var("HF_HUB_CACHE", home.path().join("hub"));
    assert_eq!(resolve_model_dir("owner/name").unwrap(), snap);
    std::env::remove_var("HF_HUB_CACHE");
    std::env::remove_var("HF_HOME");
}
