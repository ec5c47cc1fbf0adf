//! Shared helpers of the end-to-end tests: the committed transformers fixtures and comparisons.

pub mod backend_check;
pub mod batch_check;

use std::collections::HashMap;
use std::path::PathBuf;

use safetensors::SafeTensors;

/// Tiny gpt-oss checkpoints made by scripts/gen_fixtures.py, with transformers' f32 logits.
pub const FIXTURES: &[&str] = &["tiny-a", "tiny-b"];

/// Largest |ours - transformers| allowed on any logit of the f32 reference path.
/// Both sides compute in f32 from identical (bf16-exact) weights; they differ only in
/// summation order and libm (exp, cos, sin), ~1e-6 relative per op, which over a few layers
/// and logits of magnitude ~10 stays well below this bound.
pub const F32_LOGIT_TOLERANCE: f32 = 1e-4;

/// `$GPTOSS_FIXTURES/name` when that variable is set (test binaries run away from the source
/// tree, e.g. on a GPU machine without cargo), else `tests/fixtures/name` of this checkout.
pub fn fixture_dir(name: &str) -> PathBuf {
    match std::env::var_os("GPTOSS_FIXTURES").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join(name),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join(name),
    }
}

/// The contents of a fixture's reference.safetensors.
pub struct Reference {
    pub i32s: HashMap<String, Vec<i32>>,
    pub f32s: HashMap<String, (Vec<usize>, Vec<f32>)>,
}

impl Reference {
    pub fn load(name: &str) -> Reference {
        let path = fixture_dir(name).join("reference.safetensors");
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let st = SafeTensors::deserialize(&bytes).expect("reference.safetensors parses");
        let mut r = Reference {
            i32s: HashMap::new(),
            f32s: HashMap::new(),
        };
        for (name, view) in st.tensors() {
            let data = view.data();
            match view.dtype() {
                safetensors::Dtype::I32 => {
                    r.i32s.insert(
                        name,
                        data.chunks_exact(4)
                            .map(|b| i32::from_le_bytes(b.try_into().unwrap()))
                            .collect(),
                    );
                }
                safetensors::Dtype::F32 => {
                    let v = data
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                        .collect();
                    r.f32s.insert(name, (view.shape().to_vec(), v));
                }
                other => panic!("unexpected dtype {other:?} for {name}"),
            }
        }
        r
    }

    pub fn tokens(&self, key: &str) -> Vec<u32> {
        self.i32s[key].iter().map(|t| *t as u32).collect()
    }

    /// Prompts and their logits: (prompt, logits [T*V]).
    pub fn prompts(&self) -> Vec<(Vec<u32>, Vec<f32>)> {
        (0..)
            .map_while(|i| {
                let p = self.i32s.get(&format!("prompt_{i}"))?;
                Some((
                    p.iter().map(|t| *t as u32).collect(),
                    self.f32s[&format!("logits_{i}")].1.clone(),
                ))
            })
            .collect()
    }
}

/// Index of the largest logit, first on ties (the engine's own greedy choice).
pub use gptoss_models::model::argmax;

/// Compare logits row by row: returns the max abs difference; panics (with the row) on a
/// different argmax.
pub fn compare_logits(what: &str, ours: &[f32], reference: &[f32], vocab: usize) -> f32 {
    assert_eq!(ours.len(), reference.len(), "{what}: logits length");
    let mut max_diff = 0f32;
    for (row, (a, b)) in ours.chunks(vocab).zip(reference.chunks(vocab)).enumerate() {
        assert_eq!(
            argmax(a),
            argmax(b),
            "{what}: argmax differs at position {row}"
        );
        for (x, y) in a.iter().zip(b) {
            assert!(x.is_finite(), "{what}: non-finite logit at position {row}");
            max_diff = max_diff.max((x - y).abs());
        }
    }
    max_diff
}

/// Logits of every position of `prompt` in a fresh session, fed `chunk` tokens per step
/// (1 = token by token through the KV cache, `usize::MAX` = one prefill).
pub fn logits_in_chunks(
    model: &mut gptoss_models::Model,
    prompt: &[u32],
    chunk: usize,
) -> Vec<f32> {
    let mut s = model.new_session(prompt.len()).expect("session");
    let mut got = Vec::with_capacity(prompt.len() * model.config.vocab_size);
    for part in prompt.chunks(chunk) {
        got.extend(
            model
                .forward(&mut s, part, gptoss_models::LogitsWanted::All)
                .expect("forward"),
        );
    }
    model.free_session(s).expect("free session");
    got
}

/// Every prompt of fixture `name` fed `chunk` tokens per step must match transformers: same
/// argmax at every position and max abs diff under [`F32_LOGIT_TOLERANCE`]. `what` labels the
/// run in messages ("prefill", "incremental", ...). Returns the largest difference seen.
pub fn check_fixture_prompts(
    model: &mut gptoss_models::Model,
    name: &str,
    chunk: usize,
    what: &str,
) -> f32 {
    let v = model.config.vocab_size;
    let mut worst = 0f32;
    for (i, (prompt, want)) in Reference::load(name).prompts().into_iter().enumerate() {
        let label = format!("{name} prompt {i} {what}");
        let got = logits_in_chunks(model, &prompt, chunk);
        let diff = compare_logits(&label, &got, &want, v);
        eprintln!("{label}: max abs diff {diff:.3e}");
        assert!(diff < F32_LOGIT_TOLERANCE, "{label}: max abs diff {diff}");
        worst = worst.max(diff);
    }
    worst
}
