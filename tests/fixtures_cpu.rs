//! The cpu backend against transformers' f32 logits on every committed fixture.

use gptoss_backend_cpu::cpu_backend;
use gptoss_e2e::{check_fixture_prompts, fixture_dir, Reference, FIXTURES};
use gptoss_models::{LogitsWanted, Model};

fn load(name: &str) -> Model {
    Model::load(&fixture_dir(name), Box::new(cpu_backend(0)), &mut |_, _| {})
        .expect("fixture loads")
}

#[test]
fn prefill_matches_transformers() {
    for name in FIXTURES {
        let mut model = load(name);
        for (prompt, _) in Reference::load(name).prompts() {
            assert!(prompt.len() >= 40 && prompt.len() > model.config.sliding_window * 4);
        }
        check_fixture_prompts(&mut model, name, usize::MAX, "prefill");
    }
}

#[test]
fn incremental_decoding_matches_transformers() {
    for name in FIXTURES {
        check_fixture_prompts(&mut load(name), name, 1, "incremental");
    }
}

#[test]
fn chunked_prefill_matches_transformers() {
    // Prompts in uneven chunks exercise the cache across window boundaries.
    for name in FIXTURES {
        check_fixture_prompts(&mut load(name), name, 7, "chunked");
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
fn greedy_generation_stops_inside_a_chunk_and_chunks_carry_on() {
    // generate_greedy hands the decode steps to the backend in chunks (greedy_continue): a
    // stop token in the middle of a chunk ends the output there, seen by on_token in order;
    // chunks of several sizes in one session give the step-by-step tokens.
    let name = FIXTURES[0];
    let mut model = load(name);
    let r = Reference::load(name);
    let (prompt, want) = (r.tokens("greedy_prompt"), r.tokens("greedy_tokens"));
    let stop_at = 3.min(want.len() - 1);
    let mut seen = Vec::new();
    let got = model
        .generate_greedy(&prompt, want.len(), &[want[stop_at]], 0, &mut |t| {
            seen.push(t)
        })
        .unwrap();
    let first = want.iter().position(|&t| t == want[stop_at]).unwrap();
    assert_eq!(got, want[..=first], "output up to the first stop token");
    assert_eq!(seen, got, "on_token saw each token once, in order");

    let mut s = model.new_session(prompt.len() + want.len()).unwrap();
    let mut last = model.forward_argmax(&mut s, &prompt).unwrap();
    let mut chained = vec![last];
    for n in [1, 2, 3] {
        let n = n.min(want.len() - chained.len());
        let chunk = model.decode_greedy(&mut s, last, n).unwrap();
        last = *chunk.last().unwrap_or(&last);
        chained.extend(chunk);
    }
    assert_eq!(chained, want[..chained.len()], "chunks of 1, 2 and 3 steps");
    let room = s.capacity() - s.len();
    let e = model
        .decode_greedy(&mut s, last, room + 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("context"), "{e}");
}

#[test]
fn a_greedy_sequence_decodes_in_chunks_as_step_by_step() {
    // `gptoss generate`'s greedy path: the prompt and first token one pass, then
    // Sequence::decode_greedy in chunks; the same tokens as the reference's greedy
    // continuation, ending at max_tokens exactly, and refused on a sampled sequence.
    use gptoss_models::generation::{SeqEnd, Sequence};
    use gptoss_models::sampler::{Sampler, SamplingParams};
    let name = FIXTURES[0];
    let mut model = load(name);
    let r = Reference::load(name);
    let (prompt, want) = (r.tokens("greedy_prompt"), r.tokens("greedy_tokens"));
    let greedy = Sampler::new(SamplingParams::greedy()).unwrap();
    let cap = prompt.len() + want.len();
    let mut seq =
        Sequence::new(&mut model, prompt.clone(), greedy, want.len(), vec![], cap).unwrap();
    assert!(
        seq.decode_greedy(&mut model, 2).is_err(),
        "before the first token"
    );
    while !seq.feed(&mut model, usize::MAX).unwrap() {}
    let mut got = vec![seq.sample().unwrap()];
    for n in [1, 2, 4, 100] {
        if got.last().unwrap().1.is_some() {
            break;
        }
        got.extend(seq.decode_greedy(&mut model, n).unwrap());
    }
    let ids: Vec<u32> = got.iter().map(|x| x.0).collect();
    assert_eq!(ids, want, "chunked greedy tokens");
    assert_eq!(got.last().unwrap().1, Some(SeqEnd::MaxTokens));
    assert!(got[..got.len() - 1].iter().all(|x| x.1.is_none()));
    seq.free(&mut model).unwrap();

    let params = SamplingParams {
        temperature: 0.7,
        seed: Some(1),
        ..Default::default()
    };
    let sampled = Sampler::new(params).unwrap();
    let mut seq = Sequence::new(&mut model, prompt, sampled, 4, vec![], cap).unwrap();
    while !seq.feed(&mut model, usize::MAX).unwrap() {}
    seq.sample().unwrap();
    let e = seq.decode_greedy(&mut model, 2).unwrap_err().to_string();
    assert!(e.contains("sampled"), "{e}");
    seq.free(&mut model).unwrap();
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
fn one_token_steps_of_interleaved_sessions_match_separate_runs() {
    // One-token steps reuse their io buffers and graph (Model's decode cache): switching
    // sessions (other KV buffers) and what the step returns must rebuild what differs.
    let (prompt, _) = Reference::load("tiny-b").prompts().remove(0);
    let wants = [LogitsWanted::Argmax, LogitsWanted::Last, LogitsWanted::All];
    let run = |model: &mut Model, s: &mut gptoss_models::Session, i: usize| {
        model.forward(s, &prompt[i..i + 1], wants[i % 3]).unwrap()
    };
    let n = prompt.len().min(12);
    let mut alone = Vec::new();
    for _ in 0..2 {
        let mut model = load("tiny-b");
        let mut s = model.new_session(n).unwrap();
        alone.push(
            (0..n)
                .map(|i| run(&mut model, &mut s, i))
                .collect::<Vec<_>>(),
        );
    }
    let mut model = load("tiny-b");
    let mut a = model.new_session(n).unwrap();
    let mut b = model.new_session(n).unwrap();
    for i in 0..n {
        assert_eq!(
            run(&mut model, &mut a, i),
            alone[0][i],
            "session a, step {i}"
        );
        // Session b runs one step behind, so the positions differ too.
        if i > 0 {
            assert_eq!(
                run(&mut model, &mut b, i - 1),
                alone[1][i - 1],
                "session b, step {i}"
            );
        }
    }
    // A session freed and replaced (perhaps on the same buffer ids) starts over correctly.
    model.free_session(a).unwrap();
    let mut c = model.new_session(n).unwrap();
    for (i, want) in alone[0].iter().enumerate().take(3) {
        assert_eq!(&run(&mut model, &mut c, i), want, "session c, step {i}");
    }
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
