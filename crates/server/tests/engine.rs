//! The engine interleaves requests (chunked prefill between decode steps, one decode step per
//! request per round) without changing any of them: every output equals the same request run
//! alone with `Model::generate_greedy`; a request with a call constraint writes only what it
//! allows.

use std::path::PathBuf;
use std::time::Duration;

use gptoss_backend_cpu::cpu_backend;
use gptoss_models::sampler::SamplingParams;
use gptoss_models::tokenizer::Tokenizer;
use gptoss_models::Model;
use gptoss_server::engine::{self, End, EngineOptions, Event, GenRequest, SubmitError};
use gptoss_server::tool_choice::CallConstraint;

fn tiny() -> Model {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-b");
    Model::load(&dir, Box::new(cpu_backend(1)), &mut |_, _| {}).expect("load tiny-b")
}

fn prompt(i: usize, vocab: usize) -> Vec<u32> {
    // Different lengths (1 to 19 tokens) so prefill chunks and decodes mix.
    (0..1 + (i * 7) % 19)
        .map(|j| ((i * 31 + j * 17) % vocab) as u32)
        .collect()
}

#[test]
fn interleaved_requests_match_greedy_alone() {
    let mut reference = tiny();
    let vocab = reference.config.vocab_size;
    let n = 12;
    let max_tokens = 9;
    let expected: Vec<Vec<u32>> = (0..n)
        .map(|i| {
            reference
                .generate_greedy(&prompt(i, vocab), max_tokens, &[], 0, &mut |_| {})
                .unwrap()
        })
        .collect();
    let opts = EngineOptions {
        max_batch: 5, // fewer than the requests: some wait in the queue and join later
        queue: 64,
        prefill_chunk: 4,
    };
    let handle = engine::start(tiny(), opts, 1000);
    let mut rxs = Vec::new();
    for i in 0..n {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let req = GenRequest {
            prompt: prompt(i, vocab),
            sampling: SamplingParams::greedy(),
            max_tokens,
            stop_ids: Vec::new(),
            constraint: None,
            events: tx,
        };
        assert!(handle.submit(req).is_ok());
        rxs.push(rx);
    }
    for (i, mut rx) in rxs.into_iter().enumerate() {
        let mut got = Vec::new();
        let end = loop {
            match rx.blocking_recv() {
                Some(Event::Token(t)) => got.push(t),
                Some(Event::Done {
                    end,
                    prompt_tokens,
                    completion_tokens,
                }) => {
                    assert_eq!(prompt_tokens, prompt(i, vocab).len());
                    assert_eq!(completion_tokens, got.len());
                    break end;
                }
                other => panic!("request {i}: {other:?}"),
            }
        };
        assert_eq!(end, End::MaxTokens);
        assert_eq!(got, expected[i], "request {i}");
    }
}

#[test]
fn full_queue_refuses_and_dropped_receivers_cancel() {
    let opts = EngineOptions {
        max_batch: 1,
        queue: 1,
        prefill_chunk: 256,
    };
    let handle = engine::start(tiny(), opts, 1000);
    let req = |max_tokens| {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let r = GenRequest {
            prompt: vec![1, 2, 3],
            sampling: SamplingParams::greedy(),
            max_tokens,
            stop_ids: Vec::new(),
            constraint: None,
            events: tx,
        };
        (r, rx)
    };
    // A long request occupies the only slot; one more fits the queue; the third is refused.
    let (a, mut a_rx) = req(100_000);
    assert!(handle.submit(a).is_ok());
    assert!(matches!(a_rx.blocking_recv(), Some(Event::Token(_))));
    let (b, mut b_rx) = req(2);
    assert!(handle.submit(b).is_ok());
    let (c, _c_rx) = req(2);
    assert_eq!(handle.submit(c).err(), Some(SubmitError::QueueFull));
    // Dropping the long request's receiver cancels it: the queued one then runs to the end.
    drop(a_rx);
    let mut tokens = 0;
    loop {
        match b_rx.blocking_recv() {
            Some(Event::Token(_)) => tokens += 1,
            Some(Event::Done { end, .. }) => {
                assert_eq!(end, End::MaxTokens);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(tokens, 2);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        handle
            .stats
            .running
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[test]
fn constrained_request_writes_only_the_allowed_header() {
    // tiny-b's 1024 ids hold no harmony control token, so of the call headers only the
    // recipient-first one can be started: ` to=functions.f`, spelled with low ids.
    let tok: &'static Tokenizer = Box::leak(Box::new(Tokenizer::o200k_harmony().unwrap()));
    let model = tiny();
    let vocab = model.config.vocab_size;
    let handle = engine::start(
        model,
        EngineOptions {
            max_batch: 2,
            queue: 4,
            prefill_chunk: 4,
        },
        1000,
    );
    let run = |constraint: Option<CallConstraint>| {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let req = GenRequest {
            prompt: prompt(5, vocab),
            sampling: SamplingParams::greedy(),
            max_tokens: 6,
            stop_ids: Vec::new(),
            constraint,
            events: tx,
        };
        assert!(handle.submit(req).is_ok());
        let mut got = Vec::new();
        loop {
            match rx.blocking_recv() {
                Some(Event::Token(t)) => got.push(t),
                Some(Event::Done { end, .. }) => {
                    assert_eq!(end, End::MaxTokens);
                    break got;
                }
                other => panic!("{other:?}"),
            }
        }
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
}
