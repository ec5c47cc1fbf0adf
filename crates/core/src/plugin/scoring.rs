//! Scoring rules for the planned GPU backends, as pure functions over a device table.
//!
//! ARCHITECTURE.md "Selection": on NVIDIA, sm_90 / sm_100+ -> cuda-mxfp4, sm_70..sm_89 ->
//! cuda-bf16, any other GPU -> wgpu, nothing -> cpu. The numbers:
//!
//! | backend      | device                         | score |
//! |--------------|--------------------------------|-------|
//! | `cuda-mxfp4` | NVIDIA sm_90+ (Hopper, Blackwell sm_100/sm_120) | 100 |
//! | `cuda-bf16`  | NVIDIA sm_70..sm_89            | 90    |
//! | `cuda-bf16`  | NVIDIA sm_90+ (runs if forced, cuda-mxfp4 wins) | 50 |
//! | `wgpu`       | any GPU adapter                | 30    |
//! | `wgpu`       | software adapter (lavapipe)    | 0 (1 with GPTOSS_WGPU_SOFTWARE=1) |
//! | `cpu`        | always                         | 1     |
//!
//! Everything else scores 0 with a reason a user can act on.
//!
//! The CUDA and wgpu plugins do not exist yet; when they do, their own `probe_devices` calls
//! these functions (for their one backend, over the devices they see) so that the rules live in
//! one place and stay tested here on simulated tables.

use super::registry::Offer;
use crate::{DeviceReport, ProbeReport};

pub const CUDA_MXFP4: &str = "cuda-mxfp4";
pub const CUDA_BF16: &str = "cuda-bf16";
pub const WGPU: &str = "wgpu";
pub const CPU: &str = "cpu";

/// The planned backends, in the default preference order.
pub const PLANNED: &[&str] = &[CUDA_MXFP4, CUDA_BF16, WGPU, CPU];

pub const SCORE_CUDA_MXFP4: u32 = 100;
pub const SCORE_CUDA_BF16: u32 = 90;
pub const SCORE_CUDA_BF16_ON_MXFP4_GPU: u32 = 50;
pub const SCORE_WGPU: u32 = 30;
pub const SCORE_CPU: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vendor {
    Nvidia,
    Amd,
    Intel,
    Apple,
    Other(String),
}

impl std::fmt::Display for Vendor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Vendor::Nvidia => "NVIDIA",
            Vendor::Amd => "AMD",
            Vendor::Intel => "Intel",
            Vendor::Apple => "Apple",
            Vendor::Other(s) => s,
        })
    }
}

/// One GPU of a device table (as CUDA or a wgpu adapter reports it).
#[derive(Debug, Clone, PartialEq)]
pub struct Gpu {
    pub vendor: Vendor,
    pub name: String,
    /// NVIDIA only: (major, minor), (9, 0) = sm_90.
    pub compute_capability: Option<(u32, u32)>,
    pub memory_bytes: Option<u64>,
    pub driver: Option<String>,
}

impl Gpu {
    pub fn nvidia(name: &str, cc: (u32, u32)) -> Gpu {
        Gpu {
            vendor: Vendor::Nvidia,
            name: name.into(),
            compute_capability: Some(cc),
            memory_bytes: None,
            driver: None,
        }
    }

    pub fn other(vendor: Vendor, name: &str) -> Gpu {
        Gpu {
            vendor,
            name: name.into(),
            compute_capability: None,
            memory_bytes: None,
            driver: None,
        }
    }
}

/// "sm_86".
pub fn sm(cc: (u32, u32)) -> String {
    format!("sm_{}{}", cc.0, cc.1)
}

/// NVIDIA's name for the architecture of a compute capability.
pub fn architecture(cc: (u32, u32)) -> &'static str {
    match cc {
        (3, _) => "Kepler",
        (5, _) => "Maxwell",
        (6, _) => "Pascal",
        (7, 0) | (7, 2) => "Volta",
        (7, _) => "Turing",
        (8, 9) => "Ada",
        (8, _) => "Ampere",
        (9, _) => "Hopper",
        (10..=12, _) => "Blackwell",
        _ => "unknown architecture",
    }
}

/// Is `cc` at least `min`?
fn at_least(cc: (u32, u32), min: (u32, u32)) -> bool {
    cc >= min
}

/// The CUDA compute capability of an NVIDIA GPU, or the score-0 reason why CUDA cannot use it.
fn cuda_cc(gpu: &Gpu) -> Result<(u32, u32), String> {
    if gpu.vendor != Vendor::Nvidia {
        return Err(format!("{} is not an NVIDIA GPU", gpu.name));
    }
    gpu.compute_capability
        .ok_or_else(|| format!("{}: compute capability unknown (no CUDA driver?)", gpu.name))
}

/// cuda-mxfp4 on one GPU: sm_90+ scores 100, anything else 0.
pub fn cuda_mxfp4(gpu: &Gpu) -> (u32, String) {
    let cc = match cuda_cc(gpu) {
        Ok(cc) => cc,
        Err(why) => return (0, why),
    };
    if at_least(cc, (9, 0)) {
        (
            SCORE_CUDA_MXFP4,
            format!("{} ({}): native MXFP4 path", sm(cc), architecture(cc)),
        )
    } else {
        let hint = if at_least(cc, (7, 0)) {
            CUDA_BF16
        } else {
            WGPU
        };
        (
            0,
            format!(
                "needs sm_90+ (Hopper/Blackwell), found {}; try --backend {hint}",
                sm(cc)
            ),
        )
    }
}

/// What cuda-bf16's large products (prefill, batched decode) run on for capability `cc`.
fn tensor_core_operands(cc: (u32, u32)) -> &'static str {
    if at_least(cc, (8, 0)) {
        "bf16 tensor cores for prefill"
    } else if at_least(cc, (7, 5)) {
        "f16 tensor cores for prefill (no bf16 ones before sm_80)"
    } else {
        "f16 tensor cores (mma m8n8k4) for prefill (no bf16 ones before sm_80)"
    }
}

/// cuda-bf16 on one GPU: sm_70..sm_89 scores 90, sm_90+ 50 (runs when forced, but
/// cuda-mxfp4 wins), below sm_70 0.
pub fn cuda_bf16(gpu: &Gpu) -> (u32, String) {
    let cc = match cuda_cc(gpu) {
        Ok(cc) => cc,
        Err(why) => return (0, why),
    };
    if at_least(cc, (9, 0)) {
        (
            SCORE_CUDA_BF16_ON_MXFP4_GPU,
            format!(
                "{} ({}) runs bf16, but cuda-mxfp4 is preferred here",
                sm(cc),
                architecture(cc)
            ),
        )
    } else if at_least(cc, (7, 0)) {
        (
            SCORE_CUDA_BF16,
            format!(
                "{} ({}): bf16 weights on CUDA, {}",
                sm(cc),
                architecture(cc),
                tensor_core_operands(cc)
            ),
        )
    } else {
        (
            0,
            format!(
                "needs sm_70+ (Volta or newer), found {} ({}); try --backend wgpu",
                sm(cc),
                architecture(cc)
            ),
        )
    }
}

/// wgpu on one GPU: any adapter scores 30 (below CUDA on NVIDIA, above cpu).
pub fn wgpu(gpu: &Gpu) -> (u32, String) {
    (
        SCORE_WGPU,
        format!("{} GPU adapter {}", gpu.vendor, gpu.name),
    )
}

/// Reason of a software adapter (lavapipe, llvmpipe, WARP): it works, but slower than cpu.
pub const WGPU_SOFTWARE_REASON: &str = "software adapter (lavapipe/llvmpipe): slower than cpu; \
     set GPTOSS_WGPU_SOFTWARE=1 to make it usable with --backend wgpu";

/// wgpu on one adapter: a GPU scores [`SCORE_WGPU`]; a software (CPU) adapter scores 0, so
/// auto-selection never prefers it to cpu. (The registry refuses to force a score-0 backend,
/// so the plugin lifts it to [`SCORE_CPU`] when the user opts in with GPTOSS_WGPU_SOFTWARE=1.)
pub fn wgpu_adapter(gpu: &Gpu, software: bool) -> (u32, String) {
    if software {
        (0, format!("{}: {WGPU_SOFTWARE_REASON}", gpu.name))
    } else {
        wgpu(gpu)
    }
}

/// cpu: always 1, the last resort.
pub fn cpu() -> (u32, String) {
    (SCORE_CPU, "always available (slowest)".into())
}

/// What `backend`'s probe reports over `gpus`: one device entry per GPU with its score and
/// reason (cpu: one entry for the host). No GPU: one score-0 entry saying so. Unknown backend
/// names get an empty report.
pub fn probe_report(backend: &str, gpus: &[Gpu]) -> ProbeReport {
    let rule: fn(&Gpu) -> (u32, String) = match backend {
        CUDA_MXFP4 => cuda_mxfp4,
        CUDA_BF16 => cuda_bf16,
        WGPU => wgpu,
        CPU => {
            let (score, reason) = cpu();
            return ProbeReport {
                devices: vec![DeviceReport {
                    name: "host CPU".into(),
                    score,
                    reason,
                    ..Default::default()
                }],
            };
        }
        _ => return ProbeReport::default(),
    };
    if gpus.is_empty() {
        let reason = if backend == WGPU {
            "no GPU adapter found"
        } else {
            "no NVIDIA GPU found"
        };
        return ProbeReport {
            devices: vec![DeviceReport {
                name: "none".into(),
                score: 0,
                reason: reason.into(),
                ..Default::default()
            }],
        };
    }
    ProbeReport {
        devices: gpus
            .iter()
            .map(|g| {
                let (score, reason) = rule(g);
                DeviceReport {
                    name: g.name.clone(),
                    compute_capability: g.compute_capability,
                    memory_bytes: g.memory_bytes,
                    driver: g.driver.clone(),
                    score,
                    reason,
                }
            })
            .collect(),
    }
}

/// A backend's bid from its probe: the best device's score and reason. A probe that failed
/// bids 0 with the error as the reason; a probe with no device bids 0.
pub fn offer_from_probe(name: &str, probe: &Result<ProbeReport, String>) -> Offer {
    let (score, reason) = match probe {
        Err(e) => (0, format!("probe failed: {e}")),
        // the first device among those with the best score
        Ok(report) => match report
            .devices
            .iter()
            .find(|d| d.score == report.best_score())
        {
            Some(d) => (d.score, d.reason.clone()),
            None => (0, "probe reported no device".into()),
        },
    };
    Offer {
        name: name.into(),
        score,
        reason,
    }
}

/// The planned backends' offers over a simulated device table.
pub fn offers(gpus: &[Gpu]) -> Vec<Offer> {
    PLANNED
        .iter()
        .map(|b| offer_from_probe(b, &Ok(probe_report(b, gpus))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::registry::choose;
    use super::*;
    use crate::config::EngineConfig;

    fn pick(gpus: &[Gpu]) -> String {
        let offers = offers(gpus);
        let i = choose(&offers, None, &EngineConfig::default().preference).unwrap();
        offers[i].name.clone()
    }

    fn offer<'a>(offers: &'a [Offer], name: &str) -> &'a Offer {
        offers.iter().find(|o| o.name == name).unwrap()
    }

    #[test]
    fn hopper_picks_cuda_mxfp4() {
        assert_eq!(
            pick(&[Gpu::nvidia("NVIDIA H100 80GB HBM3", (9, 0))]),
            CUDA_MXFP4
        );
        let o = offers(&[Gpu::nvidia("H100", (9, 0))]);
        assert_eq!(offer(&o, CUDA_MXFP4).score, 100);
        assert!(offer(&o, CUDA_MXFP4).reason.contains("Hopper"));
        assert_eq!(offer(&o, CUDA_BF16).score, 50);
        assert_eq!(offer(&o, WGPU).score, 30);
        assert_eq!(offer(&o, CPU).score, 1);
    }

    #[test]
    fn blackwell_picks_cuda_mxfp4() {
        assert_eq!(pick(&[Gpu::nvidia("NVIDIA B200", (10, 0))]), CUDA_MXFP4);
        assert_eq!(pick(&[Gpu::nvidia("RTX 5090", (12, 0))]), CUDA_MXFP4);
        assert!(cuda_mxfp4(&Gpu::nvidia("RTX 5090", (12, 0)))
            .1
            .contains("sm_120 (Blackwell)"));
    }

    #[test]
    fn ampere_and_ada_and_turing_pick_cuda_bf16() {
        for cc in [(8, 0), (8, 6), (8, 9), (7, 5), (7, 0)] {
            assert_eq!(pick(&[Gpu::nvidia("gpu", cc)]), CUDA_BF16, "{cc:?}");
        }
        let o = offers(&[Gpu::nvidia("RTX 3090", (8, 6))]);
        assert_eq!(offer(&o, CUDA_BF16).score, 90);
        assert_eq!(offer(&o, CUDA_MXFP4).score, 0);
        assert_eq!(
            offer(&o, CUDA_MXFP4).reason,
            "needs sm_90+ (Hopper/Blackwell), found sm_86; try --backend cuda-bf16"
        );
        assert!(cuda_bf16(&Gpu::nvidia("4090", (8, 9))).1.contains("Ada"));
        assert!(cuda_bf16(&Gpu::nvidia("T4", (7, 5))).1.contains("Turing"));
        // The probe's reason says what the prefill products run on per generation.
        assert!(cuda_bf16(&Gpu::nvidia("A100", (8, 0)))
            .1
            .contains("bf16 tensor cores"));
        let t4 = cuda_bf16(&Gpu::nvidia("T4", (7, 5))).1;
        assert!(t4.contains("f16 tensor cores"), "{t4}");
        let v100 = cuda_bf16(&Gpu::nvidia("V100", (7, 0))).1;
        assert!(
            v100.contains("Volta") && v100.contains("f16 tensor cores (mma m8n8k4)"),
            "{v100}"
        );
    }

    #[test]
    fn forcing_mxfp4_on_ampere_is_refused_with_the_reason() {
        let o = offers(&[Gpu::nvidia("A100", (8, 0))]);
        let e = choose(&o, Some(CUDA_MXFP4), &[]).unwrap_err().to_string();
        assert!(
            e.contains("needs sm_90+") && e.contains("found sm_80"),
            "{e}"
        );
        assert!(e.contains("cuda-bf16 (score 90)"), "{e}");
    }

    #[test]
    fn pascal_falls_back_to_wgpu() {
        let gpus = [Gpu::nvidia("GTX 1080", (6, 1))];
        assert_eq!(pick(&gpus), WGPU);
        let o = offers(&gpus);
        assert_eq!(offer(&o, CUDA_BF16).score, 0);
        assert!(
            offer(&o, CUDA_BF16).reason.contains("needs sm_70+")
                && offer(&o, CUDA_BF16).reason.contains("sm_61"),
            "{}",
            offer(&o, CUDA_BF16).reason
        );
        assert!(offer(&o, CUDA_MXFP4).reason.contains("try --backend wgpu"));
    }

    #[test]
    fn no_gpu_picks_cpu() {
        assert_eq!(pick(&[]), CPU);
        let o = offers(&[]);
        assert_eq!(offer(&o, WGPU).score, 0);
        assert_eq!(offer(&o, WGPU).reason, "no GPU adapter found");
        assert_eq!(offer(&o, CUDA_MXFP4).reason, "no NVIDIA GPU found");
    }

    #[test]
    fn non_nvidia_gpus_pick_wgpu() {
        for v in [Vendor::Amd, Vendor::Intel, Vendor::Apple] {
            let gpus = [Gpu::other(v.clone(), "some gpu")];
            assert_eq!(pick(&gpus), WGPU, "{v}");
            let o = offers(&gpus);
            assert_eq!(offer(&o, CUDA_MXFP4).score, 0);
            assert!(offer(&o, CUDA_MXFP4).reason.contains("not an NVIDIA GPU"));
        }
    }

    #[test]
    fn best_device_of_a_mixed_table_decides() {
        // An Ampere card beside a Hopper card: the Hopper one makes cuda-mxfp4 win.
        let gpus = [
            Gpu::nvidia("A6000", (8, 6)),
            Gpu::nvidia("H100", (9, 0)),
            Gpu::other(Vendor::Intel, "iGPU"),
        ];
        assert_eq!(pick(&gpus), CUDA_MXFP4);
        let r = probe_report(CUDA_MXFP4, &gpus);
        assert_eq!(
            r.devices.iter().map(|d| d.score).collect::<Vec<_>>(),
            [0, 100, 0]
        );
    }

    #[test]
    fn software_wgpu_adapters_score_zero_with_the_reason() {
        let lavapipe = Gpu::other(
            Vendor::Other("Cpu".into()),
            "llvmpipe (LLVM 19.1.7, 256 bits)",
        );
        let (score, reason) = wgpu_adapter(&lavapipe, true);
        assert_eq!(score, 0);
        assert!(
            reason.contains("llvmpipe") && reason.contains("slower than cpu"),
            "{reason}"
        );
        assert!(reason.contains("GPTOSS_WGPU_SOFTWARE=1"), "{reason}");
        let amd = Gpu::other(Vendor::Amd, "Radeon RX 7900 XTX");
        assert_eq!(wgpu_adapter(&amd, false).0, SCORE_WGPU);
        assert!(SCORE_CPU > wgpu_adapter(&lavapipe, true).0);
    }

    #[test]
    fn probe_errors_and_empty_probes_bid_zero() {
        let o = offer_from_probe("x", &Err("driver exploded".into()));
        assert_eq!(
            (o.score, o.reason.as_str()),
            (0, "probe failed: driver exploded")
        );
        let o = offer_from_probe("y", &Ok(ProbeReport::default()));
        assert_eq!(o.score, 0);
        assert!(o.reason.contains("no device"));
        assert!(probe_report("nope", &[]).devices.is_empty());
    }
}
