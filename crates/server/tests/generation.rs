//! gptoss_models::generation, the per-sequence logic the CLI and the engine share: a
//! session-backed `Sequence` and paged sequences stepped together by `step_paged` give the
//! same tokens, through the same `LogitsMask` hook. (Here rather than in gptoss-models, whose
//! tests have no backend.)

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use gptoss_backend_cpu::cpu_backend;
use gptoss_models::batch::PagedKv;
use gptoss_models::generation::{
    step_paged, Fed, LogitsMask, PagedSequence, SeqEnd, SeqState, Sequence,
};
use gptoss_models::sampler::{Sampler, SamplingParams};
use gptoss_models::Model;

fn tiny() -> Model {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-b");
    Model::load(&dir, Box::new(cpu_backend(1)), &mut |_, _| {}).expect("load tiny-b")
}

/// Bans every even id and records the ids drawn.
struct OddOnly(Arc<Mutex<Vec<u32>>>);

impl LogitsMask for OddOnly {
    fn mask(&mut self, logits: &mut [f32]) {
        for l in logits.iter_mut().step_by(2) {
            *l = f32::NEG_INFINITY;
        }
    }
    fn accept(&mut self, id: u32) {
        self.0.lock().unwrap().push(id);
    }
}

fn state(prompt: Vec<u32>, max_tokens: usize, seen: &Arc<Mutex<Vec<u32>>>) -> SeqState {
    let sampler = Sampler::new(SamplingParams::greedy()).unwrap();
    SeqState::new(prompt, sampler, max_tokens, Vec::new())
        .with_mask(Box::new(OddOnly(seen.clone())))
}

#[test]
fn feeding_is_separate_from_the_forward_pass() {
    let sampler = Sampler::new(SamplingParams::greedy()).unwrap();
    let mut s = SeqState::new(vec![1, 2, 3, 4, 5], sampler, 2, vec![7]);
    assert_eq!(s.max_positions(), 7);
    assert_eq!(s.next_feed(2).unwrap(), &[1, 2]);
    assert!(!s.accept(2, vec![0.0; 10]));
    assert!(s.sample().is_none(), "no logits yet");
    assert_eq!(s.next_feed(100).unwrap(), &[3, 4, 5]);
    let mut logits = vec![0.0; 10];
    logits[7] = 1.0;
    assert!(s.accept(3, logits));
    assert!(s.is_ready() && !s.is_prefilling());
    assert!(
        s.next_feed(4).unwrap().is_empty(),
        "logits wait to be sampled"
    );
    assert_eq!(s.sample(), Some((7, Some(SeqEnd::StopToken(7)))));
    assert_eq!(s.next_feed(4).unwrap(), &[7]);
    let empty = SeqState::new(
        Vec::new(),
        Sampler::new(SamplingParams::greedy()).unwrap(),
        2,
        Vec::new(),
    );
    assert!(empty.next_feed(4).is_err());
}

#[test]
fn paged_steps_match_sessions_through_the_mask() {
    let mut model = tiny();
    let max_tokens = 10;
    let prompts: Vec<Vec<u32>> = [1usize, 6, 17, 25]
        .iter()
        .map(|&n| (0..n).map(|j| (j * 29 % 1000) as u32 + 1).collect())
        .collect();
    // Alone, each with its own session (the CLI's path).
    let mut alone = Vec::new();
    for p in &prompts {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let st = state(p.clone(), max_tokens, &seen);
        let mut seq = Sequence::with_state(&mut model, st, p.len() + max_tokens).unwrap();
        loop {
            while !seq.feed(&mut model, 4).unwrap() {}
            if let Some((_, Some(end))) = seq.sample() {
                assert_eq!(end, SeqEnd::MaxTokens);
                break;
            }
        }
        let out = seq.generated().to_vec();
        assert!(
            out.iter().all(|id| id % 2 == 1),
            "the mask was skipped: {out:?}"
        );
        assert_eq!(*seen.lock().unwrap(), out, "the mask saw every draw");
        seq.free(&mut model).unwrap();
        alone.push(out);
    }
    // Together, one forward pass per step, prompts in chunks of 4 beside the decodes.
    let mut kv = model.new_paged_kv(256).unwrap();
    let seens: Vec<_> = prompts
        .iter()
        .map(|_| Arc::new(Mutex::new(Vec::new())))
        .collect();
    let mut seqs: Vec<PagedSequence> = prompts
        .iter()
        .zip(&seens)
        .map(|(p, seen)| PagedSequence::new(state(p.clone(), max_tokens, seen)))
        .collect();
    let mut done = vec![false; seqs.len()];
    let mut steps = 0;
    while done.iter().any(|d| !d) {
        let mut batch: Vec<(&mut PagedSequence, usize)> = seqs
            .iter_mut()
            .zip(&done)
            .filter(|(_, d)| !**d)
            .map(|(s, _)| (s, 4))
            .collect();
        let fed = step_paged(&mut model, &mut kv, &mut batch).unwrap();
        drop(batch);
        steps += 1;
        let live: Vec<usize> = (0..seqs.len()).filter(|&i| !done[i]).collect();
        for (&i, f) in live.iter().zip(&fed) {
            if f.ready {
                if let Some((_, Some(_))) = seqs[i].sample() {
                    done[i] = true;
                }
            }
        }
    }
    for (i, s) in seqs.iter_mut().enumerate() {
        assert_eq!(s.state().generated(), alone[i], "sequence {i}");
        assert_eq!(*seens[i].lock().unwrap(), alone[i]);
        assert_eq!(s.positions(), prompts[i].len() + max_tokens - 1);
        s.release(&mut kv);
        assert_eq!(s.positions(), 0);
    }
    assert_eq!(kv.free_pages(), kv.total_pages());
    // The longest prompt alone needs ceil(25/4) + 9 passes; the batch took no more.
    assert_eq!(steps, 25usize.div_ceil(4) + max_tokens - 1);
    model.free_paged_kv(kv).unwrap();
}

#[test]
fn a_step_with_waiting_logits_is_refused_and_changes_nothing() {
    let mut model = tiny();
    let mut kv = model.new_paged_kv(64).unwrap();
    let greedy = || Sampler::new(SamplingParams::greedy()).unwrap();
    let mut a = PagedSequence::new(SeqState::new(vec![1, 2, 3], greedy(), 4, Vec::new()));
    let mut b = PagedSequence::new(SeqState::new(vec![4, 5], greedy(), 4, Vec::new()));
    let fed = step_paged(&mut model, &mut kv, &mut [(&mut a, 2), (&mut b, 8)]).unwrap();
    assert_eq!(
        fed,
        vec![
            Fed {
                tokens: 2,
                prompt_tokens: 2,
                ready: false
            },
            Fed {
                tokens: 2,
                prompt_tokens: 2,
                ready: true
            },
        ]
    );
    // b's logits wait to be sampled: a step with it fails, and a keeps its place.
    let free = kv.free_pages();
    let err = step_paged(&mut model, &mut kv, &mut [(&mut a, 2), (&mut b, 1)]).unwrap_err();
    assert!(err.to_string().contains("wait to be sampled"), "{err}");
    assert_eq!(
        (a.positions(), b.positions(), kv.free_pages()),
        (2, 2, free)
    );
    assert_eq!(a.state().prefilled(), 2);
    assert!(b.sample().is_some());
    let fed = step_paged(&mut model, &mut kv, &mut [(&mut a, 2), (&mut b, 1)]).unwrap();
    assert_eq!(
        fed[0],
        Fed {
            tokens: 1,
            prompt_tokens: 1,
            ready: true
        }
    );
    assert_eq!(
        fed[1],
        Fed {
            tokens: 1,
            prompt_tokens: 0,
            ready: true
        }
    );
    assert_eq!(PagedKv::pages_for(a.positions()), 1);
    a.release(&mut kv);
    b.release(&mut kv);
    assert_eq!(kv.free_pages(), kv.total_pages());
}
