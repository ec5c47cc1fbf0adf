//! Adapter discovery: every adapter wgpu sees (Vulkan on Linux, Metal on macOS, DX12 on
//! Windows), scored by the shared rules in `gptoss_core::plugin::scoring`.

use gptoss_core::plugin::scoring::{self, Gpu, Vendor};
use gptoss_core::{DeviceReport, ProbeReport};

/// What one adapter offers, in the words `gptoss backends` prints.
#[derive(Debug, Clone)]
pub struct AdapterSummary {
    pub name: String,
    pub backend: String,
    pub device_type: wgpu::DeviceType,
    pub driver: String,
    pub shader_f16: bool,
    pub max_storage_binding: u64,
    pub max_buffer: u64,
    pub vendor: u32,
}

impl AdapterSummary {
    pub fn of(a: &wgpu::Adapter) -> AdapterSummary {
        let info = a.get_info();
        let limits = a.limits();
        AdapterSummary {
            name: info.name.clone(),
            backend: format!("{:?}", info.backend),
            device_type: info.device_type,
            driver: format!("{} {}", info.driver, info.driver_info)
                .trim()
                .to_string(),
            shader_f16: a.features().contains(wgpu::Features::SHADER_F16),
            max_storage_binding: limits.max_storage_buffer_binding_size,
            max_buffer: limits.max_buffer_size,
            vendor: info.vendor,
        }
    }

    pub fn is_software(&self) -> bool {
        self.device_type == wgpu::DeviceType::Cpu
    }

    pub fn vendor(&self) -> Vendor {
        match self.vendor {
            0x10de => Vendor::Nvidia,
            0x1002 | 0x1022 => Vendor::Amd,
            0x8086 => Vendor::Intel,
            0x106b => Vendor::Apple,
            _ => Vendor::Other(format!("{:?}", self.device_type)),
        }
    }
}

/// The adapters of this machine, compute-capable ones only, best first (discrete GPUs,
/// integrated, virtual, software).
pub fn adapters() -> Result<Vec<wgpu::Adapter>, String> {
    if wgpu::Instance::enabled_backend_features().is_empty() {
        return Err("this build of the wgpu plugin has no graphics API for this platform".into());
    }
    let instance = std::panic::catch_unwind(|| {
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle())
    })
    .map_err(|_| "wgpu could not create an instance".to_string())?;
    let mut list = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    let rank = |t: wgpu::DeviceType| match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    };
    list.sort_by_key(|a| rank(a.get_info().device_type));
    Ok(list)
}

/// One device entry per adapter: a GPU scores 30 (below CUDA on NVIDIA, above cpu), a software
/// adapter (lavapipe/llvmpipe) 0 for auto-selection; no adapter: one score-0 entry saying why.
pub fn probe() -> ProbeReport {
    let list = match std::panic::catch_unwind(adapters) {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => return none(&e),
        Err(_) => return none("enumerating wgpu adapters panicked"),
    };
    if list.is_empty() {
        return none("no GPU adapter found (no Vulkan/Metal/DX12 driver, or no GPU)");
    }
    ProbeReport {
        devices: list
            .iter()
            .map(|a| {
                let s = AdapterSummary::of(a);
                let gpu = Gpu {
                    vendor: s.vendor(),
                    name: s.name.clone(),
                    compute_capability: None,
                    memory_bytes: None,
                    driver: Some(s.driver.clone()),
                };
                let (mut score, mut reason) = scoring::wgpu_adapter(&gpu, s.is_software());
                if s.is_software() && software_allowed() {
                    score = scoring::SCORE_CPU;
                    reason = format!(
                        "{}: software adapter, allowed by GPTOSS_WGPU_SOFTWARE=1",
                        s.name
                    );
                }
                DeviceReport {
                    name: format!(
                        "{} ({}, {:?}, shader-f16 {}, max storage binding {} MiB)",
                        s.name,
                        s.backend,
                        s.device_type,
                        if s.shader_f16 { "yes" } else { "no" },
                        s.max_storage_binding >> 20
                    ),
                    compute_capability: None,
                    memory_bytes: None,
                    driver: Some(s.driver),
                    score,
                    reason,
                }
            })
            .collect(),
    }
}

fn none(reason: &str) -> ProbeReport {
    ProbeReport {
        devices: vec![DeviceReport {
            name: "none".into(),
            score: 0,
            reason: reason.into(),
            ..Default::default()
        }],
    }
}

/// GPTOSS_WGPU_SOFTWARE=1: let a software adapter bid (score 1), so `--backend wgpu` runs on it.
pub fn software_allowed() -> bool {
    std::env::var("GPTOSS_WGPU_SOFTWARE").is_ok_and(|v| !v.is_empty() && v != "0")
}
