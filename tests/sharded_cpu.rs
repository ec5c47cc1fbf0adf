//! One model split over several cpu backends in one process (tensor and expert parallel,
//! the sums through the host all-reduce) against transformers and against the unsplit model.

use gptoss_backend_cpu::cpu_backend;
use gptoss_core::collective::{new_group_name, ShardOptions};
use gptoss_core::Backend;
use gptoss_e2e::{
    check_fixture_prompts, compare_logits, fixture_dir, logits_in_chunks, Reference,
    F32_LOGIT_TOLERANCE, FIXTURES,
};
use gptoss_models::{Model, Sharding};

fn shards(world: usize) -> Vec<Box<dyn Backend>> {
    let group = new_group_name();
    (0..world)
        .map(|rank| {
            let shard = ShardOptions {
                rank,
                world,
                group: group.clone(),
            };
            Box::new(cpu_backend(1).with_shard(&shard).expect("shard")) as Box<dyn Backend>
        })
        .collect()
}

fn load(name: &str, world: usize, expert_parallel: bool) -> Model {
    let sharding = Sharding {
        world,
        expert_parallel,
    };
    Model::load_sharded(&fixture_dir(name), shards(world), sharding, &mut |_, _| {})
        .expect("sharded fixture loads")
}

#[test]
fn tensor_parallel_2_matches_transformers_prefill_and_incremental() {
    for name in FIXTURES {
        let mut m = load(name, 2, false);
        assert_eq!(m.world(), 2);
        check_fixture_prompts(&mut m, name, usize::MAX, "tp2 prefill");
        check_fixture_prompts(&mut m, name, 1, "tp2 incremental");
    }
}

#[test]
fn expert_parallel_2_and_4_match_transformers() {
    for name in FIXTURES {
        check_fixture_prompts(&mut load(name, 2, true), name, 5, "ep2 chunked");
        // tiny-a has 4 experts, tiny-b 8, both only 2 kv heads: EP=4 needs heads to split too.
    }
    let err = Model::load_sharded(
        &fixture_dir("tiny-a"),
        shards(4),
        Sharding {
            world: 4,
            expert_parallel: true,
        },
        &mut |_, _| {},
    )
    .err()
    .expect("4 shards of 2 kv heads are refused")
    .to_string();
    assert!(err.contains("2 key/value heads"), "{err}");
}

#[test]
fn split_logits_equal_the_unsplit_model() {
    // Same arithmetic in another order (partial sums per shard): within the f32 tolerance of
    // the single-backend run, and the same argmax at every position.
    let name = "tiny-b";
    let (prompt, _) = Reference::load(name).prompts().remove(0);
    let mut one =
        Model::load(&fixture_dir(name), Box::new(cpu_backend(1)), &mut |_, _| {}).expect("loads");
    let want = logits_in_chunks(&mut one, &prompt, 16);
    let v = one.config.vocab_size;
    for ep in [false, true] {
        let got = logits_in_chunks(&mut load(name, 2, ep), &prompt, 16);
        let diff = compare_logits(&format!("ep={ep} vs unsplit"), &got, &want, v);
        eprintln!("ep={ep}: max abs diff to the unsplit model {diff:.3e}");
        assert!(diff < F32_LOGIT_TOLERANCE, "ep={ep}: {diff}");
    }
}

#[test]
fn greedy_tokens_match_when_split() {
    let name = "tiny-a";
    let r = Reference::load(name);
    let want = r.tokens("greedy_tokens");
    let got = load(name, 2, false)
        .generate_greedy(&r.tokens("greedy_prompt"), want.len(), &[], 0, &mut |_| {})
        .unwrap();
    assert_eq!(got, want);
}

/// Shard backend that, on its `fail_at`-th execute, runs a graph with one weight bound to a
/// buffer it does not have: the shard fails before its first all-reduce.
struct FailsOnce {
    inner: Box<dyn Backend>,
    executes: usize,
    fail_at: usize,
}

impl Backend for FailsOnce {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn probe(&self) -> gptoss_core::ProbeReport {
        self.inner.probe()
    }
    fn alloc(&mut self, d: &gptoss_core::TensorDesc) -> gptoss_core::Result<gptoss_core::BufferId> {
        self.inner.alloc(d)
    }
    fn free(&mut self, id: gptoss_core::BufferId) -> gptoss_core::Result<()> {
        self.inner.free(id)
    }
    fn upload(&mut self, id: gptoss_core::BufferId, data: &[u8]) -> gptoss_core::Result<()> {
        self.inner.upload(id, data)
    }
    fn download(&mut self, id: gptoss_core::BufferId) -> gptoss_core::Result<Vec<u8>> {
        self.inner.download(id)
    }
    fn load_weight(
        &mut self,
        name: &str,
        d: &gptoss_core::TensorDesc,
        data: &[u8],
    ) -> gptoss_core::Result<gptoss_core::BufferId> {
        self.inner.load_weight(name, d, data)
    }
    fn execute(&mut self, graph: &gptoss_core::Graph) -> gptoss_core::Result<()> {
        self.executes += 1;
        if self.executes != self.fail_at {
            return self.inner.execute(graph);
        }
        let mut broken = graph.clone();
        let w = broken
            .values
            .iter_mut()
            .find(|v| matches!(v.kind, gptoss_core::graph::ValueKind::Weight(_)))
            .expect("a weight");
        w.kind = gptoss_core::graph::ValueKind::Weight(gptoss_core::BufferId(u64::MAX));
        self.inner.execute(&broken)
    }
}

#[test]
fn a_shard_that_fails_stops_the_others_and_the_model_stays_usable() {
    let name = "tiny-a";
    let mut backends = shards(2);
    let rank1 = backends.pop().unwrap();
    backends.push(Box::new(FailsOnce {
        inner: rank1,
        executes: 0,
        fail_at: 2,
    }));
    let sharding = Sharding {
        world: 2,
        expert_parallel: false,
    };
    let mut m = Model::load_sharded(&fixture_dir(name), backends, sharding, &mut |_, _| {})
        .expect("sharded fixture loads");
    let mut unsplit = Model::load(&fixture_dir(name), Box::new(cpu_backend(1)), &mut |_, _| {})
        .expect("fixture loads");
    let tokens = [1u32, 5, 9, 200];
    let wanted = gptoss_models::LogitsWanted::Last;
    let mut s = m.new_session(8).unwrap();
    m.forward(&mut s, &tokens[..2], wanted).expect("first step");
    // Rank 1 fails in the second step; rank 0 must not wait 300 s for it.
    let start = std::time::Instant::now();
    let e = m
        .forward(&mut s, &tokens[2..3], wanted)
        .expect_err("the failing shard fails the step")
        .to_string();
    assert!(start.elapsed().as_secs() < 30, "{:?}", start.elapsed());
    assert!(e.contains("unknown buffer"), "{e}");
    // The failed step left the session as it was: the next one continues it correctly.
    let got = m
        .forward(&mut s, &tokens[2..], wanted)
        .expect("model still usable");
    let mut u = unsplit.new_session(8).unwrap();
    let want = unsplit.forward(&mut u, &tokens, wanted).unwrap();
    let diff = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(diff < 1e-4, "split after a failed step vs unsplit: {diff}");
}
