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
