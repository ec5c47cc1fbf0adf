//! `gptoss backends`: every backend found, the devices each sees with score and reason, which
//! one auto-selection picks, where plugins were looked for, refused plugin files, and the GPUs.

use std::path::PathBuf;

use clap::Args as ClapArgs;
use gptoss_core::config::EngineConfig;
use gptoss_core::plugin::registry;
use gptoss_core::plugin::scoring::{self, Gpu};
use gptoss_core::{DeviceReport, Result};
use serde::Serialize;

use crate::backend_select::{self, Candidate, Source};
use crate::common;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Engine config file (TOML); default $GPTOSS_CONFIG if set, else built-in defaults.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

#[derive(Serialize)]
struct Report {
    /// Folders searched for plugins, in priority order.
    searched: Vec<Folder>,
    backends: Vec<BackendEntry>,
    rejected: Vec<Rejected>,
    /// The config's `backend` ("auto" or a forced name).
    configured: String,
    auto: AutoPick,
    gpus: Gpus,
}

#[derive(Serialize)]
struct Folder {
    path: PathBuf,
    exists: bool,
}

#[derive(Serialize)]
struct BackendEntry {
    name: String,
    /// "plugin" or "built-in".
    source: &'static str,
    path: Option<PathBuf>,
    abi_version: Option<u32>,
    version: String,
    /// Whether this entry takes part in selection (a built-in is replaced by a plugin of its name).
    candidate: bool,
    note: Option<String>,
    score: u32,
    reason: String,
    probe_error: Option<String>,
    devices: Vec<Device>,
}

#[derive(Serialize)]
struct Device {
    name: String,
    compute_capability: Option<String>,
    memory_bytes: Option<u64>,
    driver: Option<String>,
    score: u32,
    reason: String,
}

#[derive(Serialize)]
struct Rejected {
    path: PathBuf,
    reason: String,
}

#[derive(Serialize)]
struct AutoPick {
    backend: Option<String>,
    score: Option<u32>,
    error: Option<String>,
}

#[derive(Serialize)]
struct Gpus {
    cuda: Vec<gptoss_gpu_detect::CudaDevice>,
    /// Why there are no CUDA devices.
    cuda_error: Option<String>,
    /// What the scoring rules of the planned backends say about these GPUs.
    rules: Vec<Rule>,
    best_by_rules: Option<String>,
}

#[derive(Serialize)]
struct Rule {
    backend: String,
    score: u32,
    reason: String,
    installed: bool,
}

fn device(d: &DeviceReport) -> Device {
    Device {
        name: d.name.clone(),
        compute_capability: d.compute_capability.map(scoring::sm),
        memory_bytes: d.memory_bytes,
        driver: d.driver.clone(),
        score: d.score,
        reason: d.reason.clone(),
    }
}

fn entry(c: &Candidate, candidate: bool, note: Option<String>) -> BackendEntry {
    let (source, path, abi_version, version) = match &c.source {
        Source::Plugin(p) => (
            "plugin",
            Some(p.path.clone()),
            Some(p.abi_version),
            p.version.clone(),
        ),
        Source::BuiltIn => (
            "built-in",
            None,
            None,
            env!("CARGO_PKG_VERSION").to_string(),
        ),
    };
    BackendEntry {
        name: c.name().to_string(),
        source,
        path,
        abi_version,
        version,
        candidate,
        note,
        score: c.offer.score,
        reason: c.offer.reason.clone(),
        probe_error: c.probe.as_ref().err().cloned(),
        devices: c
            .probe
            .as_ref()
            .map(|p| p.devices.iter().map(device).collect())
            .unwrap_or_default(),
    }
}

fn report(cfg: &EngineConfig) -> Report {
    let survey = backend_select::survey(cfg);
    let mut backends: Vec<BackendEntry> = survey
        .candidates
        .iter()
        .map(|c| entry(c, true, None))
        .collect();
    for b in &survey.shadowed_built_ins {
        let plugin = backends
            .iter()
            .find(|e| e.name == b.name())
            .and_then(|e| e.path.clone());
        let note = plugin.map(|p| {
            format!(
                "not used: the {} plugin at {} replaces it",
                b.name(),
                p.display()
            )
        });
        backends.push(entry(b, false, note));
    }
    let auto = match survey.auto_choice(cfg) {
        Ok(c) => AutoPick {
            backend: Some(c.name().to_string()),
            score: Some(c.offer.score),
            error: None,
        },
        Err(e) => AutoPick {
            backend: None,
            score: None,
            error: Some(e.to_string()),
        },
    };
    let (cuda, cuda_error) = match gptoss_gpu_detect::cuda_devices() {
        Ok(d) => (d, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    let table: Vec<Gpu> = cuda
        .iter()
        .map(|d| Gpu {
            memory_bytes: Some(d.memory_bytes),
            driver: Some(d.driver_version.clone()),
            ..Gpu::nvidia(&d.name, d.compute_capability)
        })
        .collect();
    let offers = scoring::offers(&table);
    let best_by_rules = registry::choose(&offers, None, &cfg.preference)
        .ok()
        .map(|i| offers[i].name.clone());
    let rules = offers
        .into_iter()
        .map(|o| Rule {
            installed: survey.candidates.iter().any(|c| c.name() == o.name),
            backend: o.name,
            score: o.score,
            reason: o.reason,
        })
        .collect();
    Report {
        searched: survey
            .searched
            .iter()
            .map(|p| Folder {
                exists: p.is_dir(),
                path: p.clone(),
            })
            .collect(),
        backends,
        rejected: survey
            .rejected
            .iter()
            .map(|(p, r)| Rejected {
                path: p.clone(),
                reason: r.clone(),
            })
            .collect(),
        configured: cfg.backend.clone(),
        auto,
        gpus: Gpus {
            cuda,
            cuda_error,
            rules,
            best_by_rules,
        },
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

fn print_text(r: &Report) {
    println!("Backends:");
    println!(
        "  {:<12} {:<9} {:>3} {:<9} {:>5}  PATH",
        "NAME", "SOURCE", "ABI", "VERSION", "SCORE"
    );
    for b in &r.backends {
        let abi = b.abi_version.map(|v| v.to_string()).unwrap_or("-".into());
        let path = b
            .path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "(linked into gptoss)".into());
        println!(
            "  {:<12} {:<9} {:>3} {:<9} {:>5}  {path}",
            b.name, b.source, abi, b.version, b.score
        );
        if let Some(n) = &b.note {
            println!("      {n}");
        }
        if let Some(e) = &b.probe_error {
            println!("      probe failed: {e}");
        }
        if b.devices.is_empty() && b.probe_error.is_none() {
            println!("      no devices");
        }
        for d in &b.devices {
            let mut extra = Vec::new();
            if let Some(cc) = &d.compute_capability {
                extra.push(cc.clone());
            }
            if let Some(m) = d.memory_bytes {
                extra.push(gib(m));
            }
            let extra = if extra.is_empty() {
                String::new()
            } else {
                format!(" [{}]", extra.join(", "))
            };
            println!(
                "      device {}{extra}: score {}: {}",
                d.name, d.score, d.reason
            );
        }
    }
    match (&r.auto.backend, &r.auto.error) {
        (Some(b), _) => println!(
            "Auto-selection picks: {b} (score {})",
            r.auto.score.unwrap_or(0)
        ),
        (None, Some(e)) => println!("Auto-selection fails: {e}"),
        _ => {}
    }
    if r.configured != "auto" {
        println!("The config forces backend: {}", r.configured);
    }
    println!("Plugin folders searched (in order):");
    for f in &r.searched {
        let missing = if f.exists { "" } else { " (missing)" };
        println!("  {}{missing}", f.path.display());
    }
    if !r.rejected.is_empty() {
        println!("Rejected plugin files:");
        for x in &r.rejected {
            println!("  {}: {}", x.path.display(), x.reason);
        }
    }
    println!("GPUs:");
    match &r.gpus.cuda_error {
        Some(e) => println!("  no CUDA devices: {e}"),
        None => {
            for d in &r.gpus.cuda {
                println!(
                    "  CUDA {}: {}, {}, {}, driver {}",
                    d.index,
                    d.name,
                    d.sm(),
                    gib(d.memory_bytes),
                    d.driver_version
                );
            }
        }
    }
    // Vulkan/Metal/DX12 adapters are what the wgpu plugin's probe lists (above).
    if r.backends.iter().any(|b| b.name == "wgpu") {
        println!("  (Vulkan/Metal/DX12 adapters: see the wgpu backend's devices above)");
    } else {
        println!("  (Vulkan/Metal/DX12 adapters are listed when the wgpu plugin is installed)");
    }
    if let Some(best) = &r.gpus.best_by_rules {
        let installed = r
            .gpus
            .rules
            .iter()
            .any(|x| &x.backend == best && x.installed);
        let note = if installed {
            String::new()
        } else {
            format!(" (the {best} plugin is not installed)")
        };
        println!("  By the scoring rules this machine suits: {best}{note}");
        for x in &r.gpus.rules {
            println!("    {:<12} {:>3}  {}", x.backend, x.score, x.reason);
        }
    }
}

pub fn run(args: Args) -> Result<()> {
    let cfg = common::load_config(args.config.as_deref())?;
    let r = report(&cfg);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&r).expect("the report serialises")
        );
    } else {
        print_text(&r);
    }
    Ok(())
}
