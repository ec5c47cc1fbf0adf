//! Several sequences per step over a paged KV cache (the server's continuous batching) on the
//! cpu backend, unsplit and split over two simulated shards.

use gptoss_backend_cpu::cpu_backend;
use gptoss_core::collective::{new_group_name, ShardOptions};
use gptoss_core::Backend;
use gptoss_e2e::batch_check::{check_batched_greedy, check_batched_prompts};
use gptoss_e2e::{fixture_dir, FIXTURES};
use gptoss_models::batch::{BatchItem, PagedSeq};
use gptoss_models::{Model, Sharding};

fn load(name: &str) -> Model {
    Model::load(&fixture_dir(name), Box::new(cpu_backend(1)), &mut |_, _| {}).expect("loads")
}

#[test]
fn batched_prompts_match_transformers() {
    for name in FIXTURES {
        check_batched_prompts(&mut load(name), name);
    }
}

#[test]
fn batched_greedy_matches_transformers() {
    for name in FIXTURES {
        check_batched_greedy(&mut load(name), name, 3);
    }
}

#[test]
fn batched_and_split_over_two_shards() {
    let group = new_group_name();
    let shards: Vec<Box<dyn Backend>> = (0..2)
        .map(|rank| {
            let s = ShardOptions {
                rank,
                world: 2,
                group: group.clone(),
            };
            Box::new(cpu_backend(1).with_shard(&s).unwrap()) as Box<dyn Backend>
        })
        .collect();
    let sharding = Sharding {
        world: 2,
        expert_parallel: true,
    };
    let mut m =
        Model::load_sharded(&fixture_dir("tiny-b"), shards, sharding, &mut |_, _| {}).unwrap();
    check_batched_prompts(&mut m, "tiny-b");
}

#[test]
fn a_full_cache_is_refused_and_changes_nothing() {
    let mut m = load("tiny-a");
    let mut kv = m.new_paged_kv(32).unwrap(); // 2 pages of 16
    let (mut a, mut b) = (PagedSeq::new(), PagedSeq::new());
    let toks: Vec<u32> = (1..=20).collect();
    m.forward_batch(
        &mut kv,
        &mut [BatchItem {
            seq: &mut a,
            tokens: &toks,
        }],
    )
    .unwrap();
    assert_eq!((a.len(), kv.free_pages()), (20, 0));
    let err = m
        .forward_batch(
            &mut kv,
            &mut [
                BatchItem {
                    seq: &mut a,
                    tokens: &[3],
                },
                BatchItem {
                    seq: &mut b,
                    tokens: &[1, 2],
                },
            ],
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("KV cache is full"), "{err}");
    assert_eq!((a.len(), b.len(), kv.free_pages()), (20, 0, 0));
    kv.release(&mut a);
    assert_eq!(kv.free_pages(), 2);
    let bad = m.forward_batch(
        &mut kv,
        &mut [BatchItem {
            seq: &mut b,
            tokens: &[],
        }],
    );
    assert!(bad.unwrap_err().to_string().contains("no tokens"));
}

/// A no-op mask: forces the logits path (the sampler draws on the host).
struct Passthrough;
impl gptoss_models::generation::LogitsMask for Passthrough {
    fn mask(&mut self, _: &mut [f32]) {}
    fn accept(&mut self, _: u32) {}
}

#[test]
fn greedy_steps_picked_by_the_backend_equal_host_sampling() {
    use gptoss_e2e::Reference;
    use gptoss_models::generation::{sample_all, step_paged, PagedSequence, SeqState};
    use gptoss_models::sampler::{Sampler, SamplingParams};
    let mut m = load("tiny-b");
    let r = Reference::load("tiny-b");
    let prompts: Vec<Vec<u32>> = r.prompts().into_iter().map(|(p, _)| p).collect();
    let run = |m: &mut Model, masked: bool| -> Vec<Vec<u32>> {
        let mut kv = m.new_paged_kv(1024).unwrap();
        let mut seqs: Vec<PagedSequence> = prompts
            .iter()
            .map(|p| {
                let s = Sampler::new(SamplingParams::greedy()).unwrap();
                let st = SeqState::new(p.clone(), s, 12, vec![]);
                assert!(st.draws_argmax());
                PagedSequence::new(if masked {
                    st.with_mask(Box::new(Passthrough))
                } else {
                    st
                })
            })
            .collect();
        assert_eq!(seqs[0].state().draws_argmax(), !masked);
        while seqs.iter().any(|s| s.state().generated().len() < 12) {
            let live = |s: &PagedSequence| s.state().generated().len() < 12;
            let mut batch: Vec<_> = seqs
                .iter_mut()
                .filter(|s| live(s))
                .map(|s| (s, 9))
                .collect();
            let fed = step_paged(m, &mut kv, &mut batch).unwrap();
            drop(batch);
            let mut ready: Vec<&mut PagedSequence> = seqs
                .iter_mut()
                .filter(|s| live(s) && s.state().is_ready())
                .collect();
            assert!(ready.len() <= fed.len());
            sample_all(&mut ready);
        }
        let out = seqs
            .iter()
            .map(|s| s.state().generated().to_vec())
            .collect();
        for s in &mut seqs {
            s.release(&mut kv);
        }
        m.free_paged_kv(kv).unwrap();
        out
    };
    let on_backend = run(&mut m, false);
    let on_host = run(&mut m, true);
    assert_eq!(on_backend, on_host);
    assert!(on_backend.iter().all(|g| g.len() == 12));
}
