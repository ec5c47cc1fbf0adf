//! `gptoss bench`: tokens/s and the fraction of the memory-bandwidth roofline.

use clap::Args as ClapArgs;
use gptoss_core::{Error, Result};
use gptoss_models::bench::{self, BenchResult};
use gptoss_models::synthetic::{load_synthetic_sharded, Preset};
use gptoss_models::Model;
use serde::Serialize;

use crate::common::{EngineArgs, ModelArgs};
use crate::{backend_select, progress};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Benchmark a random model of this preset's real shapes, built in memory: 20b, 120b, tiny.
    #[arg(long, conflicts_with = "model")]
    pub synthetic: Option<String>,
    /// Keep only the first N layers of the synthetic model (quick runs, small machines).
    #[arg(long, requires = "synthetic")]
    pub layers: Option<usize>,
    /// Benchmark a real model folder (or cached hub id) instead.
    #[arg(long, short = 'm')]
    pub model: Option<String>,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Prompt lengths to measure, comma-separated.
    #[arg(long, default_value = "512", value_delimiter = ',')]
    pub prompt: Vec<usize>,
    /// Tokens to decode after each prompt.
    #[arg(long, default_value_t = 64)]
    pub gen: usize,
    /// Concurrent sequences, comma-separated. 1 runs the single-sequence path; more decode
    /// together in one step over a paged KV cache (decode t/s then counts all of them, and
    /// ms/tok is per step).
    #[arg(long, default_value = "1", value_delimiter = ',')]
    pub batch: Vec<usize>,
    /// Size in MiB of the vectors used to measure memory bandwidth through the backend.
    #[arg(long, default_value_t = 512)]
    pub bandwidth_mib: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Report {
    backend: String,
    model: String,
    layers: usize,
    /// GPUs (backend instances) the model is split over.
    shards: usize,
    /// Seconds to build (synthetic) or load (--model) the weights onto the backend.
    load_s: f64,
    bandwidth_gb_s: f64,
    results: Vec<BenchResult>,
}

pub fn run(a: Args) -> Result<()> {
    if a.batch.contains(&0) {
        return Err(Error::Input("--batch sizes must be at least 1".into()));
    }
    if a.gen == 0 || a.prompt.contains(&0) {
        return Err(Error::Input(
            "--prompt lengths and --gen must be at least 1".into(),
        ));
    }
    let t0 = std::time::Instant::now();
    let (mut model, label) = load(&a)?;
    let load_s = t0.elapsed().as_secs_f64();
    // Measured on one device; a split model reads from all of them at once, so its
    // roofline uses their sum.
    let (bw, mib) = bench::measure_bandwidth(model.backend_mut(), a.bandwidth_mib)?;
    if mib != a.bandwidth_mib {
        eprintln!(
            "note: the backend refused {} MiB vectors for the bandwidth measurement; used {mib} MiB",
            a.bandwidth_mib
        );
    }
    let bw = bw * model.world() as f64;
    let mut results = Vec::new();
    for p in &a.prompt {
        for b in &a.batch {
            results.push(if *b == 1 {
                bench::run(&mut model, *p, a.gen, Some(bw), 0x5eed)?
            } else {
                bench::run_batch(&mut model, *b, *p, a.gen, Some(bw), 0x5eed)?
            });
        }
    }
    let report = Report {
        backend: model.backend_name().to_string(),
        model: label,
        layers: model.config.num_hidden_layers,
        shards: model.world(),
        load_s,
        bandwidth_gb_s: bw / 1e9,
        results,
    };
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("report serialises")
        );
    } else {
        print_table(&report);
    }
    Ok(())
}

fn load(a: &Args) -> Result<(Model, String)> {
    match (&a.synthetic, &a.model) {
        (Some(preset), _) => {
            let preset_v = Preset::parse(preset)?;
            let cfg = a.engine.engine_config()?;
            let backends =
                backend_select::open_shards(&cfg, Some(&preset_v.config(a.layers)))?.backends;
            let mut bar = progress::Progress::new(format!(
                "building synthetic {preset} on {}",
                backend_select::describe(&backends)
            ));
            let mut model = load_synthetic_sharded(
                preset_v,
                a.layers,
                backends,
                backend_select::sharding(&cfg),
                0x9e37_79b9,
                &mut |d, t| bar.update(d, t),
            )?;
            bar.finish();
            model.dequantized_experts = cfg.dequantize;
            Ok((model, format!("synthetic {preset}")))
        }
        (None, Some(m)) => {
            let args = ModelArgs {
                model: m.clone(),
                engine: EngineArgs {
                    backend: a.engine.backend.clone(),
                    config: a.engine.config.clone(),
                    threads: a.engine.threads,
                    tensor_parallel: a.engine.tensor_parallel,
                    expert_parallel: a.engine.expert_parallel,
                    dequantize: a.engine.dequantize,
                },
            };
            Ok((args.load()?.0, m.clone()))
        }
        (None, None) => Err(Error::Input(
            "give --synthetic 20b|120b|tiny or --model DIR".into(),
        )),
    }
}

fn print_table(r: &Report) {
    let split = if r.shards > 1 {
        format!(" × {} (split)", r.shards)
    } else {
        String::new()
    };
    println!(
        "backend {}{split}  model {} ({} layers, loaded in {:.2} s)  measured bandwidth {:.1} GB/s",
        r.backend, r.model, r.layers, r.load_s, r.bandwidth_gb_s
    );
    println!(
        "{:>7} {:>5} {:>5} {:>12} {:>11} {:>9} {:>12} {:>9}",
        "prompt", "gen", "batch", "prefill t/s", "decode t/s", "ms/tok", "MB/token", "roofline"
    );
    for x in &r.results {
        println!(
            "{:>7} {:>5} {:>5} {:>12.1} {:>11.2} {:>9.2} {:>12.1} {:>8.1}%",
            x.prompt_tokens,
            x.gen_tokens,
            x.batch,
            x.prefill_tok_s,
            x.decode_tok_s,
            x.decode_ms_per_token,
            x.bytes_per_token as f64 / 1e6,
            100.0 * x.roofline_fraction.unwrap_or(0.0)
        );
    }
}
