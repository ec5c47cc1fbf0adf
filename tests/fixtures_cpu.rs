//! The cpu backend against transformers' f32 logits on every committed fixture.

use gptoss_backend_cpu::cpu_backend;
use gptoss_e2e::{compare_logits, fixture_dir, Reference, F32_LOGIT_TOLERANCE, FIXTURES};
use gptoss_models::{LogitsWanted, Model};

fn load(name: &str) -> Model {
    Model::load(&fixture_dir(name), Box::new(cpu_backend(0)), &mut |_, _| {})
        .expect("fixture loads")
}

#[test]
fn prefill_matches_transformers() {
    for name in FIXTURES {
        let mut model = load(name);
        let v = model.config.vocab_size;
        for (i, (prompt, want)) in Reference::load(name).prompts().into_iter().enumerate() {
            assert!(prompt.len() >= 40 && prompt.len() > model.config.sliding_window * 4);
            let mut s = model.new_session(prompt.len()).unwrap();
            let got = model.forward(&mut s, &prompt, LogitsWanted::All).unwrap();
            let diff = compare_logits(&format!("{name} prompt {i} prefill"), &got, &want, v);
            eprintln!("{name} prompt {i} prefill: max abs diff {diff:.3e}");
            assert!(
                diff < F32_LOGIT_TOLERANCE,
                "{name} prompt {i}: max abs diff {diff}"
            );
        }
    }
}

#[test]
fn incremental_decoding_matches_transformers() {
    for name in FIXTURES {
        let mut model = load(name);
        let v = model.config.vocab_size;
        for (i, (prompt, want)) in Reference::load(name).prompts().into_iter().enumerate() {
            let mut s = model.new_session(prompt.len()).unwrap();
            let mut got = Vec::new();
            for t in &prompt {
                got.extend(model.forward(&mut s, &[*t], LogitsWanted::All).unwrap());
            }
            let diff = compare_logits(&format!("{name} prompt {i} incremental"), &got, &want, v);
            eprintln!("{name} prompt {i} incremental: max abs diff {diff:.3e}");
            assert!(
                diff < F32_LOGIT_TOLERANCE,
                "{name} prompt {i}: max abs diff {diff}"
            );
        }
    }
}

#[test]
fn chunked_prefill_matches_transformers() {
    // A prompt in uneven chunks exercises the cache across window boundaries.
    for name in FIXTURES {
        let mut model = load(name);
        let v = model.config.vocab_size;
        let (prompt, want) = Reference::load(name).prompts().remove(0);
        let mut s = model.new_session(prompt.len()).unwrap();
        let mut got = Vec::new();
        for chunk in prompt.chunks(7) {
            got.extend(model.forward(&mut s, chunk, LogitsWanted::All).unwrap());
        }
        let diff = compare_logits(&format!("{name} chunked"), &got, &want, v);
        assert!(diff < F32_LOGIT_TOLERANCE, "{name}: max abs diff {diff}");
    }
}

#[test]
fn greedy_tokens_match_transformers() {
    for name in FIXTURES {
        let mut model = load(name);
        let r = Reference::load(name);
        let want = r.tokens("greedy_tokens");
        let got = model
            .generate_greedy(&r.tokens("greedy_prompt"), want.len(), &[], 0, &mut |_| {})
            .unwrap();
        assert_eq!(got, want, "{name}: greedy continuation");
    }
}

#[test]
fn last_logits_equal_the_last_row_of_all() {
    let mut model = load("tiny-a");
    let v = model.config.vocab_size;
    let (prompt, _) = Reference::load("tiny-a").prompts().remove(1);
    let mut s1 = model.new_session(prompt.len()).unwrap();
    let all = model.forward(&mut s1, &prompt, LogitsWanted::All).unwrap();
    let mut s2 = model.new_session(prompt.len()).unwrap();
    let last = model.forward(&mut s2, &prompt, LogitsWanted::Last).unwrap();
    assert_eq!(last.len(), v);
    assert_eq!(&all[all.len() - v..], &last[..]);
}

#[test]
fn rope_tables_match_transformers() {
    for name in FIXTURES {
        let model = load(name);
        let r = Reference::load(name);
        let params = model.config.rope_params();
        let ours = params.inv_freq();
        let (_, theirs) = &r.f32s["inv_freq"];
        assert_eq!(ours.len(), theirs.len());
        for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
            assert!(
                ((a - b) / b).abs() < 1e-6,
                "{name} inv_freq[{i}]: {a} vs {b}"
            );
        }
        assert_eq!(params.attention_scaling(), r.f32s["attention_scaling"].1[0]);
    }
}
