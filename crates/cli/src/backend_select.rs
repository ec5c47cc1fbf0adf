//! Choosing the backend that runs the model.
//!
//! Candidates are the plugins found in the search folders (config `plugin_dirs`,
//! `$GPTOSS_PLUGIN_PATH`, beside the executable) plus the cpu backend linked into this binary,
//! the last resort: a plugin named "cpu" replaces it, and it is used when none is found. Each
//! candidate's probe becomes an [`Offer`] (its best device's score and reason; a failed probe
//! bids 0 with the error) and [`registry::choose`] picks: the configured backend if forced,
//! else the highest score, ties broken by the config's preference list.

use std::path::PathBuf;

use gptoss_backend_cpu::{available_cores, CpuKernels};
use gptoss_core::collective::{new_group_name, ShardOptions};
use gptoss_core::config::EngineConfig;
use gptoss_core::plugin::registry::{self, Offer};
use gptoss_core::plugin::{scoring, HostPlugin, Plugin, PluginOptions};
use gptoss_core::{Backend, Error, ProbeReport, Result};
use gptoss_models::{GptOssConfig, Sharding};

/// Backends built into this binary.
pub const BUILT_IN: &[&str] = &["cpu"];

/// Where a candidate comes from.
pub enum Source {
    Plugin(Plugin),
    BuiltIn,
}

/// One backend that could run, with what its probe said.
pub struct Candidate {
    pub source: Source,
    pub probe: std::result::Result<ProbeReport, String>,
    pub offer: Offer,
}

impl Candidate {
    pub fn name(&self) -> &str {
        &self.offer.name
    }

    /// Index of the device to run on: the first of the best-scoring ones.
    fn device(&self) -> usize {
        match &self.probe {
            Ok(p) => p
                .devices
                .iter()
                .position(|d| d.score == p.best_score())
                .unwrap_or(0),
            Err(_) => 0,
        }
    }
}

/// Everything the search found: the candidates, the built-in backends a plugin replaced,
/// the folders searched and the plugin files refused.
pub struct Survey {
    pub candidates: Vec<Candidate>,
    /// Built-in backends not used because a plugin of the same name was found.
    pub shadowed_built_ins: Vec<Candidate>,
    pub searched: Vec<PathBuf>,
    pub rejected: Vec<(PathBuf, String)>,
}

impl Survey {
    pub fn offers(&self) -> Vec<Offer> {
        self.candidates.iter().map(|c| c.offer.clone()).collect()
    }

    /// The candidate auto-selection picks (ignores a forced backend).
    pub fn auto_choice(&self, cfg: &EngineConfig) -> Result<&Candidate> {
        registry::choose(&self.offers(), None, &cfg.preference).map(|i| &self.candidates[i])
    }
}

fn built_in(name: &str) -> Candidate {
    debug_assert_eq!(name, "cpu");
    let probe = Ok(<CpuKernels as HostPlugin>::probe_devices());
    Candidate {
        offer: scoring::offer_from_probe(name, &probe),
        probe,
        source: Source::BuiltIn,
    }
}

/// Find and probe every candidate.
pub fn survey(cfg: &EngineConfig) -> Survey {
    let dirs = registry::search_dirs(&cfg.plugin_dirs);
    let found = registry::discover(&dirs);
    for (path, why) in &found.rejected {
        tracing::debug!("plugin file {} refused: {why}", path.display());
    }
    let mut candidates: Vec<Candidate> = found
        .plugins
        .into_iter()
        .map(|p| {
            let probe = p.probe().map_err(|e| e.to_string());
            Candidate {
                offer: scoring::offer_from_probe(&p.name, &probe),
                probe,
                source: Source::Plugin(p),
            }
        })
        .collect();
    let mut shadowed_built_ins = Vec::new();
    for name in BUILT_IN {
        let b = built_in(name);
        if let Some(p) = candidates.iter().find(|c| c.name() == *name) {
            if let Source::Plugin(p) = &p.source {
                tracing::debug!(
                    "built-in {name} not used: plugin {name} found at {}",
                    p.path.display()
                );
            }
            shadowed_built_ins.push(b);
        } else {
            tracing::debug!("no {name} plugin found: the built-in {name} backend is a candidate");
            candidates.push(b);
        }
    }
    Survey {
        candidates,
        shadowed_built_ins,
        searched: found.searched,
        rejected: found.rejected,
    }
}

/// How `cfg` splits the model.
pub fn sharding(cfg: &EngineConfig) -> Sharding {
    Sharding {
        world: cfg.tensor_parallel.max(1),
        expert_parallel: cfg.expert_parallel,
    }
}

/// "cuda-mxfp4" or "2 × cuda-mxfp4" for a progress line.
pub fn describe(backends: &[Box<dyn Backend>]) -> String {
    match backends {
        [one] => one.name().to_string(),
        many => format!("{} × {}", many.len(), many[0].name()),
    }
}

/// The backend instances of one model, one per shard.
pub struct Opened {
    pub backends: Vec<Box<dyn Backend>>,
    /// KV-cache positions that fit every shard's device beside its weights (known when a
    /// model was given and the devices report their memory).
    pub kv_room: Option<usize>,
}

/// Pick the backend `cfg` asks for and create one instance per shard (`tensor_parallel`
/// of them, on as many devices; one when the model is not split). With `model`, first check
/// that each shard fits its device's memory (weights + a KV cache of `max_context`).
pub fn open_shards(cfg: &EngineConfig, model: Option<&GptOssConfig>) -> Result<Opened> {
    let survey = survey(cfg);
    let offers = survey.offers();
    let forced = (cfg.backend != "auto").then_some(cfg.backend.as_str());
    let chosen = registry::choose(&offers, forced, &cfg.preference);
    for o in &offers {
        let verdict = match &chosen {
            Ok(i) if offers[*i].name == o.name => "chosen",
            _ if o.score == 0 => "cannot run",
            _ if forced.is_some() => "not chosen (another backend is forced)",
            _ => "not chosen (lower score or preference)",
        };
        tracing::debug!(
            "backend {}: score {} ({}): {verdict}",
            o.name,
            o.score,
            o.reason
        );
    }
    let c = &survey.candidates[chosen?];
    if cfg.dequantize && !c.name().starts_with("cuda-") {
        return Err(Error::Input(format!(
            "--dequantize (config: dequantize) applies to the CUDA backends (cuda-mxfp4, \
             cuda-bf16); {} runs the MXFP4 experts as they are: drop it",
            c.name()
        )));
    }
    let world = cfg.tensor_parallel.max(1);
    let devices = shard_devices(c, world)?;
    let mut kv_room = None;
    if let (Some(m), Ok(probe)) = (model, &c.probe) {
        let context = m.context_limit(cfg.max_context);
        let reports: Vec<(usize, &gptoss_core::DeviceReport)> = devices
            .iter()
            .filter_map(|d| probe.devices.get(*d).map(|r| (*d, r)))
            .collect();
        let layout = crate::fit::Layout {
            sharding: sharding(cfg),
            dequantize: cfg.dequantize,
        };
        crate::fit::check(c.name(), m, layout, context, &reports)?;
        kv_room = crate::fit::kv_room(m, layout, &reports)?;
    }
    let group = new_group_name();
    // Simulated shards of the cpu backend share the cores.
    let threads = if world > 1 && cfg.threads == 0 && c.name() == "cpu" {
        (available_cores() / world).max(1)
    } else {
        cfg.threads
    };
    let mut out: Vec<Box<dyn Backend>> = Vec::with_capacity(world);
    for (rank, device) in devices.into_iter().enumerate() {
        let shard = (world > 1).then(|| ShardOptions {
            rank,
            world,
            group: group.clone(),
        });
        let options = PluginOptions {
            threads,
            device,
            shard,
            dequantize: cfg.dequantize,
        };
        out.push(match &c.source {
            Source::Plugin(p) => {
                tracing::debug!(
                    "using plugin {} from {} (device {device})",
                    p.name,
                    p.path.display()
                );
                Box::new(p.create(&options)?)
            }
            Source::BuiltIn => {
                tracing::debug!("using the built-in {} backend", c.name());
                let be = gptoss_backend_cpu::cpu_backend(options.threads);
                match &options.shard {
                    Some(s) => Box::new(be.with_shard(s)?),
                    None => Box::new(be),
                }
            }
        });
    }
    Ok(Opened {
        backends: out,
        kv_room,
    })
}

/// The device of each shard: the best-scoring devices in probe order, one per shard. The cpu
/// backend runs every shard on its one device (a simulation of the split, for tests).
fn shard_devices(c: &Candidate, world: usize) -> Result<Vec<usize>> {
    if world == 1 {
        return Ok(vec![c.device()]);
    }
    if c.name() == "cpu" {
        return Ok(vec![0; world]);
    }
    let usable: Vec<usize> = match &c.probe {
        Ok(p) => p
            .devices
            .iter()
            .enumerate()
            .filter(|(_, d)| d.score > 0 && d.score == p.best_score())
            .map(|(i, _)| i)
            .collect(),
        Err(_) => Vec::new(),
    };
    if usable.len() < world {
        return Err(Error::Input(format!(
            "--tensor-parallel {world} needs {world} devices, but {} sees {} usable one(s); \
             lower --tensor-parallel or see `gptoss backends`",
            c.name(),
            usable.len()
        )));
    }
    Ok(usable.into_iter().take(world).collect())
}
