//! The engine batches requests (one forward pass per round over every running sequence:
//! decodes and prefill chunks together, over one paged KV cache) without changing any of them:
//! every output equals the same request run alone; a request with a call constraint writes only
//! what it allows; admission follows the KV cache's pages, and every page comes back.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gptoss_backend_cpu::cpu_backend;
use gptoss_models::batch::PagedKv;
use gptoss_models::generation::{SeqEnd, Sequence};
use gptoss_models::harmony::ChatMessage;
use gptoss_models::sampler::{Sampler, SamplingParams};
use gptoss_models::tokenizer::Tokenizer;
use gptoss_models::Model;
use gptoss_server::engine::{
    self, End, EngineHandle, EngineOptions, Event, GenRequest, SubmitError,
};
use gptoss_server::gen::{self, Job, Sampling};
use gptoss_server::state::AppState;
use gptoss_server::tool_choice::CallConstraint;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

fn tiny() -> Model {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-b");
    Model::load(&dir, Box::new(cpu_backend(1)), &mut |_, _| {}).expect("load tiny-b")
}

fn prompt(i: usize, vocab: usize) -> Vec<u32> {
    // Different lengths (1 to 19 tokens: across a 16-position page and tiny-b's sliding
    // window of 8) so prefill chunks and decodes mix.
    (0..1 + (i * 7) % 19)
        .map(|j| ((i * 31 + j * 17) % vocab) as u32)
        .collect()
}

fn opts(
    max_batch: usize,
    queue: usize,
    prefill_chunk: usize,
    kv_cache_tokens: usize,
) -> EngineOptions {
    EngineOptions {
        max_batch,
        queue,
        prefill_chunk,
        kv_cache_tokens,
    }
}

fn request(
    prompt: Vec<u32>,
    sampling: SamplingParams,
    max_tokens: usize,
) -> (GenRequest, UnboundedReceiver<Event>) {
    let (tx, rx) = unbounded_channel();
    let req = GenRequest {
        prompt,
        sampling,
        max_tokens,
        stop_ids: Vec::new(),
        constraint: None,
        events: tx,
    };
    (req, rx)
}

/// Reads a request to its end: its tokens, the ending, the usage counts.
fn collect(rx: &mut UnboundedReceiver<Event>) -> (Vec<u32>, End, usize, usize) {
    let mut got = Vec::new();
    loop {
        match rx.blocking_recv() {
            Some(Event::Token(t)) => got.push(t),
            Some(Event::Done {
                end,
                prompt_tokens,
                completion_tokens,
            }) => return (got, end, prompt_tokens, completion_tokens),
            other => panic!("{other:?} after {got:?}"),
        }
    }
}

/// Waits (up to 10 s) until `f` holds.
fn eventually(what: &str, f: impl Fn() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(10), "never: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn all_pages_back(h: &EngineHandle) -> bool {
    h.stats.kv_pages_used() == 0
        && h.stats.kv_pages_reserved() == 0
        && h.stats.running.load(Ordering::Relaxed) == 0
}

#[test]
fn batched_requests_match_greedy_alone() {
    let mut reference = tiny();
    let vocab = reference.config.vocab_size;
    let n = 12;
    let max_tokens = 9;
    let chunk = 4;
    let expected: Vec<Vec<u32>> = (0..n)
        .map(|i| {
            reference
                .generate_greedy(&prompt(i, vocab), max_tokens, &[], 0, &mut |_| {})
                .unwrap()
        })
        .collect();
    // Fewer slots than requests: some wait in the queue and join between rounds.
    let handle = engine::start(tiny(), opts(5, 64, chunk, 4096)).unwrap();
    let mut rxs = Vec::new();
    for i in 0..n {
        let (req, rx) = request(prompt(i, vocab), SamplingParams::greedy(), max_tokens);
        assert!(handle.submit(req).is_ok());
        rxs.push(rx);
    }
    for (i, mut rx) in rxs.into_iter().enumerate() {
        let (got, end, prompt_tokens, completion_tokens) = collect(&mut rx);
        assert_eq!(end, End::MaxTokens);
        assert_eq!(prompt_tokens, prompt(i, vocab).len());
        assert_eq!(completion_tokens, got.len());
        assert_eq!(got, expected[i], "request {i}");
    }
    // They really shared forward passes: a full batch at some point, and far fewer passes
    // than one per request per prefill chunk or decode.
    let s = &handle.stats;
    assert_eq!(s.step_sequences_max(), 5);
    let alone: usize = (0..n)
        .map(|i| prompt(i, vocab).len().div_ceil(chunk) + max_tokens - 1)
        .sum();
    assert!(
        s.steps() > 0 && (s.steps() as usize) < alone,
        "{} steps",
        s.steps()
    );
    eventually("every page back", || all_pages_back(&handle));
}

#[test]
fn batched_sampling_matches_each_sequence_alone() {
    // Seeded sampling at temperature 0.9: the same draws batched as alone (the CLI's
    // session-backed Sequence), so the logits rows are the same.
    let mut reference = tiny();
    let vocab = reference.config.vocab_size;
    let n = 8;
    let max_tokens = 12;
    let params = |i: usize| SamplingParams {
        temperature: 0.9,
        top_p: 0.95,
        seed: Some(1000 + i as u64),
        ..SamplingParams::default()
    };
    let expected: Vec<Vec<u32>> = (0..n)
        .map(|i| {
            let p = prompt(3 * i + 1, vocab);
            let cap = p.len() + max_tokens;
            let sampler = Sampler::new(params(i)).unwrap();
            let mut seq =
                Sequence::new(&mut reference, p, sampler, max_tokens, Vec::new(), cap).unwrap();
            loop {
                while !seq.feed(&mut reference, usize::MAX).unwrap() {}
                if let Some((_, Some(end))) = seq.sample() {
                    assert_eq!(end, SeqEnd::MaxTokens);
                    break;
                }
            }
            let out = seq.generated().to_vec();
            seq.free(&mut reference).unwrap();
            out
        })
        .collect();
    let handle = engine::start(tiny(), opts(n, 64, 6, 1024)).unwrap();
    let mut rxs: Vec<_> = (0..n)
        .map(|i| {
            let (req, rx) = request(prompt(3 * i + 1, vocab), params(i), max_tokens);
            handle.submit(req).unwrap();
            rx
        })
        .collect();
    for (i, rx) in rxs.iter_mut().enumerate() {
        let (got, end, _, _) = collect(rx);
        assert_eq!(end, End::MaxTokens);
        assert_eq!(got, expected[i], "request {i}");
    }
    assert!(handle.stats.step_sequences_max() >= 2);
}

#[test]
fn full_queue_refuses_and_dropped_receivers_cancel() {
    let handle = engine::start(tiny(), opts(1, 1, 256, 16_384)).unwrap();
    let req = |max_tokens| request(vec![1, 2, 3], SamplingParams::greedy(), max_tokens);
    // A long request occupies the only slot; one more fits the queue; the third is refused.
    let (a, mut a_rx) = req(10_000);
    assert!(handle.submit(a).is_ok());
    assert!(matches!(a_rx.blocking_recv(), Some(Event::Token(_))));
    let (b, mut b_rx) = req(2);
    assert!(handle.submit(b).is_ok());
    let (c, _c_rx) = req(2);
    assert_eq!(handle.submit(c).err(), Some(SubmitError::QueueFull));
    // Dropping the long request's receiver cancels it: the queued one then runs to the end.
    drop(a_rx);
    let (tokens, end, _, _) = collect(&mut b_rx);
    assert_eq!(end, End::MaxTokens);
    assert_eq!(tokens.len(), 2);
    // A was not run to its 10 000 tokens.
    assert!(
        handle.stats.steps() < 5_000,
        "{} steps",
        handle.stats.steps()
    );
    eventually("nothing running, every page back", || {
        all_pages_back(&handle)
    });
}

#[test]
fn a_request_too_big_for_the_kv_cache_is_refused_up_front() {
    let mut reference = tiny();
    let vocab = reference.config.vocab_size;
    let handle = engine::start(tiny(), opts(4, 8, 16, 64)).unwrap(); // 4 pages of 16
    assert_eq!(handle.kv_capacity(), 64);
    assert_eq!(handle.stats.kv_pages_total(), 4);
    let p: Vec<u32> = (0..10).map(|j| (j * 37 % vocab) as u32).collect();
    let (big, mut big_rx) = request(p.clone(), SamplingParams::greedy(), 55);
    let err = handle.submit(big).unwrap_err();
    assert_eq!(
        err,
        SubmitError::TooLarge {
            needed: 65,
            capacity: 64
        }
    );
    let msg = err.to_string();
    assert!(
        msg.contains("65 KV-cache positions")
            && msg.contains("holds 64")
            && msg.contains("--kv-cache-tokens"),
        "{msg}"
    );
    // Refused before the queue: nothing waits, the sender was dropped unanswered.
    assert_eq!(handle.stats.queue_depth.load(Ordering::Relaxed), 0);
    assert_eq!(big_rx.blocking_recv(), None);
    // Exactly the whole cache fits, and runs as it does alone.
    let (fits, mut rx) = request(p.clone(), SamplingParams::greedy(), 54);
    handle.submit(fits).unwrap();
    let (got, end, _, _) = collect(&mut rx);
    assert_eq!(end, End::MaxTokens);
    let alone = reference
        .generate_greedy(&p, 54, &[], 0, &mut |_| {})
        .unwrap();
    assert_eq!(got, alone);
    eventually("every page back", || all_pages_back(&handle));
}

#[test]
fn a_request_too_big_for_the_kv_cache_is_a_400() {
    let tok: &'static Tokenizer = Box::leak(Box::new(Tokenizer::o200k_harmony().unwrap()));
    let handle = engine::start(tiny(), opts(2, 4, 16, 64)).unwrap();
    let st = Arc::new(AppState::new(handle, tok, "tiny".into(), 4096, 1024, None));
    let job = |max_tokens| Job {
        messages: vec![ChatMessage::user("hi")],
        tools: Vec::new(),
        effort: None,
        sampling: Sampling::default(),
        max_tokens: Some(max_tokens),
        stop: Vec::new(),
        must_call: None,
    };
    // Within max_context (4096) but beyond the KV cache (64 positions).
    let e = gen::prepare(&st, &job(100)).unwrap_err();
    assert_eq!(e.status.as_u16(), 400, "{e:?}");
    assert_eq!(e.code, Some("context_length_exceeded"));
    assert!(
        e.message.contains("KV cache holds 64 positions"),
        "{}",
        e.message
    );
    // The same check where the request is queued (a caller that skipped prepare).
    let e = match gen::start(&st, vec![1; 10], 60, SamplingParams::greedy(), &[], None) {
        Err(e) => e,
        Ok(_) => panic!("a request beyond the KV cache was queued"),
    };
    assert_eq!(e.status.as_u16(), 400);
    assert!(
        e.message.contains("KV cache holds 64 positions"),
        "{}",
        e.message
    );
    // Beyond max_context stays the context error.
    let e = gen::prepare(&st, &job(5000)).unwrap_err();
    assert!(
        e.message.contains("maximum context length is 4096"),
        "{}",
        e.message
    );
}

#[test]
fn a_request_waits_for_pages_then_runs() {
    let mut reference = tiny();
    let vocab = reference.config.vocab_size;
    // 4 pages: A (5 + 40 = 45 positions, 3 pages) and B (5 + 20, 2 pages) never fit together,
    // although the batch has room; B waits at the head of the queue until A ends.
    let handle = engine::start(tiny(), opts(4, 8, 16, 64)).unwrap();
    let (pa, pb) = (
        prompt(2, vocab)[..5].to_vec(),
        prompt(9, vocab)[..5].to_vec(),
    );
    let (a, mut a_rx) = request(pa.clone(), SamplingParams::greedy(), 40);
    let (b, mut b_rx) = request(pb.clone(), SamplingParams::greedy(), 20);
    handle.submit(a).unwrap();
    handle.submit(b).unwrap();
    let (ga, ea, _, _) = collect(&mut a_rx);
    let (gb, eb, _, _) = collect(&mut b_rx);
    assert_eq!((ea, eb), (End::MaxTokens, End::MaxTokens));
    assert_eq!(
        ga,
        reference
            .generate_greedy(&pa, 40, &[], 0, &mut |_| {})
            .unwrap()
    );
    assert_eq!(
        gb,
        reference
            .generate_greedy(&pb, 20, &[], 0, &mut |_| {})
            .unwrap()
    );
    assert_eq!(
        handle.stats.step_sequences_max(),
        1,
        "B ran beside A without pages"
    );
    eventually("every page back", || all_pages_back(&handle));

    // With room for both they share steps.
    let handle = engine::start(tiny(), opts(4, 8, 16, 128)).unwrap();
    let (a, mut a_rx) = request(pa, SamplingParams::greedy(), 40);
    let (b, mut b_rx) = request(pb, SamplingParams::greedy(), 20);
    handle.submit(a).unwrap();
    handle.submit(b).unwrap();
    assert_eq!(collect(&mut a_rx).0, ga);
    assert_eq!(collect(&mut b_rx).0, gb);
    assert_eq!(handle.stats.step_sequences_max(), 2);
}

#[test]
fn pages_come_back_after_cancel_and_disconnect() {
    let handle = engine::start(tiny(), opts(4, 8, 64, 8192)).unwrap();
    let max_tokens = 2000;
    let mut rxs: Vec<_> = (0..4)
        .map(|i| {
            let (req, rx) = request(
                vec![1 + i, 2, 3, 4, 5, 6, 7],
                SamplingParams::greedy(),
                max_tokens,
            );
            handle.submit(req).unwrap();
            rx
        })
        .collect();
    for rx in rxs.iter_mut() {
        assert!(matches!(rx.blocking_recv(), Some(Event::Token(_))));
    }
    let each = PagedKv::pages_for(7 + max_tokens);
    let s = &handle.stats;
    assert_eq!(s.kv_pages_reserved(), 4 * each);
    assert!(s.kv_pages_used() >= 4, "{}", s.kv_pages_used());
    // Cancel one (its receiver closed, as a stop string does) and disconnect another (its
    // receiver dropped, as when the client goes away).
    rxs[0].close();
    drop(rxs.remove(1));
    eventually("two requests' pages back", || {
        s.kv_pages_reserved() == 2 * each && s.running.load(Ordering::Relaxed) == 2
    });
    // The other two go on.
    for rx in rxs.iter_mut().skip(1) {
        assert!(matches!(rx.blocking_recv(), Some(Event::Token(_))));
    }
    drop(rxs);
    eventually("every page back", || all_pages_back(&handle));
    // The whole cache is free again: a request needing all of it runs.
    assert_eq!(handle.kv_capacity(), 8192);
    let (whole, mut rx) = request(vec![5; 16], SamplingParams::greedy(), 8192 - 16);
    handle.submit(whole).unwrap();
    assert!(matches!(rx.blocking_recv(), Some(Event::Token(_))));
    assert_eq!(s.kv_pages_reserved(), s.kv_pages_total());
    drop(rx);
    eventually("every page back again", || all_pages_back(&handle));
}

#[test]
fn abort_ends_every_request_and_frees_its_pages() {
    let handle = engine::start(tiny(), opts(4, 8, 64, 3 * 3003)).unwrap();
    let mut rxs: Vec<_> = (0..3)
        .map(|i| {
            let (req, rx) = request(vec![9, 8, 7 + i], SamplingParams::greedy(), 3000);
            handle.submit(req).unwrap();
            rx
        })
        .collect();
    for rx in rxs.iter_mut() {
        assert!(matches!(rx.blocking_recv(), Some(Event::Token(_))));
    }
    handle.abort.store(true, Ordering::Relaxed);
    for rx in rxs.iter_mut() {
        let (_, end, _, completion) = collect(rx);
        assert_eq!(end, End::Aborted);
        assert!(completion < 3000);
    }
    eventually("every page back", || all_pages_back(&handle));
}

#[test]
fn a_bad_request_fails_alone() {
    let mut reference = tiny();
    let vocab = reference.config.vocab_size as u32;
    let handle = engine::start(tiny(), opts(4, 8, 64, 1024)).unwrap();
    let (good, mut good_rx) = request(vec![3, 4, 5], SamplingParams::greedy(), 30);
    let (empty, mut empty_rx) = request(Vec::new(), SamplingParams::greedy(), 5);
    let (oov, mut oov_rx) = request(vec![1, vocab + 5], SamplingParams::greedy(), 5);
    handle.submit(good).unwrap();
    handle.submit(empty).unwrap();
    handle.submit(oov).unwrap();
    match empty_rx.blocking_recv() {
        Some(Event::Error(m)) => assert!(m.contains("empty prompt"), "{m}"),
        other => panic!("{other:?}"),
    }
    match oov_rx.blocking_recv() {
        Some(Event::Error(m)) => assert!(m.contains(&format!("token {}", vocab + 5)), "{m}"),
        other => panic!("{other:?}"),
    }
    let (got, end, _, _) = collect(&mut good_rx);
    assert_eq!(end, End::MaxTokens);
    assert_eq!(
        got,
        reference
            .generate_greedy(&[3, 4, 5], 30, &[], 0, &mut |_| {})
            .unwrap()
    );
    eventually("every page back", || all_pages_back(&handle));
}

#[test]
fn constrained_request_writes_only_the_allowed_header() {
    // tiny-b's 1024 ids hold no harmony control token, so of the call headers only the
    // recipient-first one can be started: ` to=functions.f`, spelled with low ids.
    let tok: &'static Tokenizer = Box::leak(Box::new(Tokenizer::o200k_harmony().unwrap()));
    let model = tiny();
    let vocab = model.config.vocab_size;
    let handle = engine::start(model, opts(2, 4, 4, 1000)).unwrap();
    let run = |constraint: Option<CallConstraint>| {
        let (mut req, mut rx) = request(prompt(5, vocab), SamplingParams::greedy(), 6);
        req.constraint = constraint;
        assert!(handle.submit(req).is_ok());
        let (got, end, _, _) = collect(&mut rx);
        assert_eq!(end, End::MaxTokens);
        got
    };
    let header = b" to=functions.f";
    let free = tok.decode_bytes(&run(None));
    assert!(!header.starts_with(&free[..free.len().min(header.len())]));
    let got = run(Some(CallConstraint::new(tok, vec!["f".into()])));
    assert_eq!(got.len(), 6);
    let bytes = tok.decode_bytes(&got);
    assert!(
        header.starts_with(&bytes[..bytes.len().min(header.len())]),
        "{:?}",
        String::from_utf8_lossy(&bytes)
    );
    // Batched beside free requests, the constrained one still writes the same.
    let (mut creq, mut crx) = request(prompt(5, vocab), SamplingParams::greedy(), 6);
    creq.constraint = Some(CallConstraint::new(tok, vec!["f".into()]));
    let (freq, mut frx) = request(prompt(5, vocab), SamplingParams::greedy(), 6);
    handle.submit(freq).unwrap();
    handle.submit(creq).unwrap();
    assert_eq!(collect(&mut crx).0, got);
    assert_eq!(tok.decode_bytes(&collect(&mut frx).0), free);
}

#[test]
fn the_default_kv_cache_is_capped_by_positions_and_memory() {
    use gptoss_models::synthetic::Preset;
    use gptoss_server::engine::{default_kv_cache_tokens, kv_bytes_per_position};
    let tiny = tiny().config;
    let (b20, b120) = (Preset::Gpt20b.config(None), Preset::Gpt120b.config(None));
    // f32 keys and values of every layer: 24 (36) layers x 2 x 8 heads x 64 dims x 4 bytes.
    assert_eq!(kv_bytes_per_position(&b20), 98_304);
    assert_eq!(kv_bytes_per_position(&b120), 147_456);
    // max_batch x max_context while small, then 65536 positions, then 4 GiB.
    assert_eq!(default_kv_cache_tokens(4, 1024, &tiny), 4096);
    assert_eq!(default_kv_cache_tokens(64, 4096, &tiny), 65_536);
    assert_eq!(default_kv_cache_tokens(64, 4096, &b20), (4 << 30) / 98_304);
    assert_eq!(
        default_kv_cache_tokens(64, 4096, &b120),
        (4 << 30) / 147_456
    );
    // Never below one full context.
    assert_eq!(default_kv_cache_tokens(64, 131_072, &b120), 131_072);
    // The engine's default (option 0): the model's whole context at least.
    let h = engine::start(tiny_model_small_context(), opts(2, 4, 16, 0)).unwrap();
    assert_eq!(h.kv_capacity(), 2 * 512);
}

/// tiny-b told its context is 512 positions.
fn tiny_model_small_context() -> Model {
    let mut m = tiny();
    m.config.max_position_embeddings = 512;
    m
}
