//! Host-side cost of one batch-1 decode step of the full gpt-oss-20b graph, without a GPU.
//!
//! ```sh
//! cargo run --release -p gptoss-models --example step_overhead [-- ITERS [PRESET]]
//! ```
//!
//! Nothing executes: the weights and caches are fake buffer ids. Each part of what the host
//! does per step is timed on its own, averaged over ITERS (default 200) steps:
//! - `build_step`: the graph of one decode token ([`build_step`]), and `build_step_into` the
//!   same written over the previous step's graph (what batched steps do; one-token steps of
//!   `Model::forward` reuse the previous graph outright);
//! - `validate`: [`Graph::validate`] (the plugin loader runs it, the CUDA backend again);
//! - `encode`: the loader's C form of the graph ([`codec::GraphEncoder`], reused per step as
//!   the loader does);
//! - `decode`: the plugin SDK's rebuild of it ([`codec::graph_from_c_into`] over the previous
//!   step's graph, as the SDK does; `decode fresh` into a new graph, for comparison);
//! - `Model::forward_argmax`: the whole step through a backend that passes the graph through
//!   the same encode → decode → validate path a plugin sees and otherwise does nothing
//!   (so it also counts the per-step buffer alloc/upload/free and the model's bookkeeping).
//!
//! Results and what was changed are in crates/models/NOTES.md.

use std::hint::black_box;
use std::time::Instant;

use gptoss_core::plugin::codec;
use gptoss_core::{Backend, BufferId, DType, Graph, ProbeReport, Result, TensorDesc};
use gptoss_models::graph_builder::{build_step, build_step_into, KvBinding, LogitsWanted, StepIo};
use gptoss_models::kv_cache::KvCache;
use gptoss_models::synthetic::Preset;
use gptoss_models::weights::ModelWeights;
use gptoss_models::{GptOssConfig, Model, ShardPlan};

/// A backend that owns no memory: ids count up, `execute` only crosses the plugin codec and
/// validates as a plugin would, `download` returns zeros.
struct NullBackend {
    next: u64,
    sizes: std::collections::HashMap<BufferId, usize>,
    /// The loader's encoder and the SDK's decoded graph, reused step after step as there.
    encoder: codec::GraphEncoder,
    decoded: Graph,
}

impl NullBackend {
    fn new() -> Self {
        NullBackend {
            next: 1_000_000,
            sizes: Default::default(),
            encoder: codec::GraphEncoder::new(),
            decoded: Graph::new(),
        }
    }
}

impl Backend for NullBackend {
    fn name(&self) -> &str {
        "null"
    }
    fn probe(&self) -> ProbeReport {
        ProbeReport::default()
    }
    fn alloc(&mut self, desc: &TensorDesc) -> Result<BufferId> {
        self.next += 1;
        let id = BufferId(self.next);
        self.sizes.insert(id, desc.byte_size());
        Ok(id)
    }
    fn free(&mut self, id: BufferId) -> Result<()> {
        self.sizes.remove(&id);
        Ok(())
    }
    fn upload(&mut self, _id: BufferId, _data: &[u8]) -> Result<()> {
        Ok(())
    }
    fn download(&mut self, id: BufferId) -> Result<Vec<u8>> {
        Ok(vec![0; self.sizes[&id]])
    }
    fn execute(&mut self, graph: &Graph) -> Result<()> {
        // What PluginBackendHandle::execute + sdk::execute + a backend's execute do.
        graph.validate()?;
        let enc = self.encoder.encode(graph)?;
        unsafe { codec::graph_from_c_into(&enc.as_c(), &mut self.decoded) }?;
        self.decoded.validate()
    }
}

fn fake_weights(cfg: &GptOssConfig, next: &mut u64) -> ModelWeights {
    let id = || {
        *next += 1;
        BufferId(*next)
    };
    ModelWeights::from_ids(cfg.num_hidden_layers, id, DType::BF16)
}

/// Mean microseconds per call of `f` over `iters` calls (after a few warm-up calls).
fn time_us<T>(iters: usize, mut f: impl FnMut(usize) -> T) -> f64 {
    for i in 0..5 {
        black_box(f(i));
    }
    let t0 = Instant::now();
    for i in 0..iters {
        black_box(f(i));
    }
    t0.elapsed().as_secs_f64() * 1e6 / iters as f64
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let iters: usize = args.next().map_or(200, |s| s.parse().expect("ITERS"));
    let preset = Preset::parse(&args.next().unwrap_or_else(|| "20b".into()))?;
    let cfg = preset.config(None);
    let plan = ShardPlan::whole(&cfg);
    let mut next = 0u64;
    let weights = fake_weights(&cfg, &mut next);
    let capacity = 4096;
    let cache = KvCache {
        layers: (0..cfg.num_hidden_layers)
            .map(|_| {
                next += 2;
                (BufferId(next - 1), BufferId(next))
            })
            .collect(),
        capacity,
        dtype: DType::F32,
        kv_heads: cfg.num_key_value_heads,
    };
    let kv = KvBinding::Contiguous(&cache);
    // Fresh io buffer ids each step, as Model::forward allocates them.
    let io = |i: usize| {
        let b = 10_000 + 3 * i as u64;
        StepIo {
            ids: BufferId(b),
            positions: BufferId(b + 1),
            logits: BufferId(b + 2),
            gather: None,
        }
    };
    let build = |i: usize| build_step(&cfg, &plan, &weights, &kv, 1, io(i), LogitsWanted::Argmax);

    let g = build(0);
    g.validate()?;
    // `c` points into `held` (and `g`), left alone while `c` is in use.
    let mut held = codec::GraphEncoder::new();
    let c = held.encode(&g)?.as_c();
    let mut encoder = codec::GraphEncoder::new();
    let back = unsafe { codec::graph_from_c(&c) }?;
    assert_eq!(back, g, "the codec round-trips the graph");
    let mut decoded = back;
    let name_bytes: usize = g.values.iter().map(|v| v.name.len()).sum();
    println!(
        "{preset:?} decode step: {} nodes, {} values ({name_bytes} bytes of names), {iters} iterations",
        g.nodes.len(),
        g.values.len()
    );

    let mut over = g.clone();
    let rows = [
        ("build_step", time_us(iters, build)),
        (
            "build_step_into (over the previous graph)",
            time_us(iters, |i| {
                build_step_into(
                    &mut over,
                    &cfg,
                    &plan,
                    &weights,
                    &kv,
                    1,
                    io(i),
                    LogitsWanted::Argmax,
                )
            }),
        ),
        ("validate", time_us(iters, |_| g.validate())),
        (
            "encode (loader)",
            time_us(iters, |_| encoder.encode(&g).map(|e| e.as_c().n_nodes)),
        ),
        (
            "decode (plugin)",
            time_us(iters, |_| unsafe {
                codec::graph_from_c_into(&c, &mut decoded)
            }),
        ),
        (
            "decode fresh (graph_from_c)",
            time_us(iters, |_| unsafe { codec::graph_from_c(&c) }),
        ),
    ];
    // The whole step through Model::forward_argmax on the null backend.
    let mut model = Model::from_parts(cfg.clone(), weights.clone(), Box::new(NullBackend::new()));
    let mut session = model.new_session(capacity)?;
    let mut tok = 1u32;
    let forward = time_us(iters.min(capacity - 10), |_| {
        tok = model
            .forward_argmax(&mut session, &[tok])
            .expect("step runs")
            % 1000
            + 1;
        tok
    });

    println!("{:<46} {:>10}", "part", "us/step");
    for (name, us) in rows {
        println!("{name:<46} {us:>10.1}");
    }
    let sum = rows[0].1 + 2.0 * rows[2].1 + rows[3].1 + rows[4].1;
    println!(
        "{:<46} {sum:>10.1}",
        "sum (build + 2x validate + encode + decode)"
    );
    println!(
        "{:<46} {forward:>10.1}",
        "Model::forward_argmax on a null backend"
    );
    Ok(())
}
