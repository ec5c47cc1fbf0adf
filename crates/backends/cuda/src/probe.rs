//! What this backend can run on: NVIDIA GPUs of compute capability 9.0 and newer.

use gptoss_core::plugin::scoring::{self, Gpu, Vendor};
use gptoss_core::{DeviceReport, ProbeReport};

/// Devices and scores through gptoss-gpu-detect (the driver loaded with dlopen) and the shared
/// scoring rules: sm_90+ scores 100, older GPUs 0 with the suggestion `--backend cuda-bf16`, and
/// a machine without a driver gets one score-0 entry saying so. Never panics.
pub fn probe() -> ProbeReport {
    match gptoss_gpu_detect::cuda_devices() {
        Err(reason) => ProbeReport {
            devices: vec![DeviceReport {
                name: "NVIDIA GPU".into(),
                score: 0,
                reason,
                ..Default::default()
            }],
        },
        Ok(list) => {
            let gpus: Vec<Gpu> = list
                .into_iter()
                .map(|d| Gpu {
                    vendor: Vendor::Nvidia,
                    name: d.name,
                    compute_capability: Some(d.compute_capability),
                    memory_bytes: Some(d.memory_bytes),
                    driver: Some(format!("CUDA {}", d.driver_version)),
                })
                .collect();
            scoring::probe_report(scoring::CUDA_MXFP4, &gpus)
        }
    }
}
