//! Choosing the backend that runs the model.
//!
//! Candidates are the plugins found in the search folders (config `plugin_dirs`,
//! `$GPTOSS_PLUGIN_PATH`, beside the executable) plus the cpu backend linked into this binary,
//! the last resort: a plugin named "cpu" replaces it, and it is used when none is found. Each
//! candidate's probe becomes an [`Offer`] (its best device's score and reason; a failed probe
//! bids 0 with the error) and [`registry::choose`] picks: the configured backend if forced,
//! else the highest score, ties broken by the config's preference list.

use std::path::PathBuf;

use gptoss_backend_cpu::CpuKernels;
use gptoss_core::config::EngineConfig;
use gptoss_core::plugin::registry::{self, Offer};
use gptoss_core::plugin::{scoring, HostPlugin, Plugin, PluginOptions};
use gptoss_core::{Backend, ProbeReport, Result};

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

/// Pick the backend `cfg` asks for (forced, or auto) and create it.
pub fn open(cfg: &EngineConfig) -> Result<Box<dyn Backend>> {
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
    let options = PluginOptions {
        threads: cfg.threads,
        device: c.device(),
    };
    match &c.source {
        Source::Plugin(p) => {
            tracing::debug!("using plugin {} from {}", p.name, p.path.display());
            Ok(Box::new(p.create(&options)?))
        }
        Source::BuiltIn => {
            tracing::debug!("using the built-in {} backend", c.name());
            Ok(Box::new(gptoss_backend_cpu::cpu_backend(options.threads)))
        }
    }
}
