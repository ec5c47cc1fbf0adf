//! What a flavor can run on: cuda-mxfp4 NVIDIA sm_90+, cuda-bf16 sm_70+ (best on sm_70..sm_89).

use gptoss_core::plugin::scoring::{self, Gpu, Vendor};
use gptoss_core::{DeviceReport, ProbeReport};

use crate::Flavor;

/// Devices and scores through gptoss-gpu-detect (the driver loaded with dlopen, or the fake
/// device list of GPTOSS_FAKE_CUDA_DEVICES) and the shared scoring rules of the flavor's backend
/// (`scoring::cuda_mxfp4`, `scoring::cuda_bf16`); a machine without a driver gets one score-0
/// entry saying so. Never panics.
pub fn probe<F: Flavor>() -> ProbeReport {
    crate::driver::set_flavor(F::PORTABLE);
    probe_list(F::NAME, gptoss_gpu_detect::cuda_devices())
}

/// [`probe`] over a given device list (or the reason there is none).
pub fn probe_list(
    backend: &str,
    devices: Result<Vec<gptoss_gpu_detect::CudaDevice>, String>,
) -> ProbeReport {
    match devices {
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
            scoring::probe_report(backend, &gpus)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gptoss_core::plugin::scoring::{CUDA_BF16, CUDA_MXFP4};
    use gptoss_gpu_detect::CudaDevice;

    fn dev(name: &str, cc: (u32, u32)) -> CudaDevice {
        CudaDevice {
            index: 0,
            name: name.into(),
            compute_capability: cc,
            memory_bytes: 16 << 30,
            driver_version: "12.8".into(),
        }
    }

    const TABLE: &[(&str, (u32, u32))] = &[
        ("GeForce GTX 1080", (6, 1)),
        ("Tesla V100", (7, 0)),
        ("Tesla T4", (7, 5)),
        ("A100", (8, 0)),
        ("RTX 3090", (8, 6)),
        ("L4", (8, 9)),
        ("H100", (9, 0)),
    ];

    #[test]
    fn simulated_devices_score_per_flavor() {
        // (cuda-bf16, cuda-mxfp4) per row of TABLE.
        let want = [
            (0, 0),
            (90, 0),
            (90, 0),
            (90, 0),
            (90, 0),
            (90, 0),
            (50, 100),
        ];
        for ((name, cc), (bf16, mxfp4)) in TABLE.iter().zip(want) {
            for (backend, score) in [(CUDA_BF16, bf16), (CUDA_MXFP4, mxfp4)] {
                let r = probe_list(backend, Ok(vec![dev(name, *cc)]));
                assert_eq!(r.devices.len(), 1, "{backend} {name}");
                let d = &r.devices[0];
                assert_eq!(
                    d.score, score,
                    "{backend} on {name} sm_{}{}: {d:?}",
                    cc.0, cc.1
                );
                assert!(!d.reason.is_empty());
                if score == 0 {
                    assert!(d.reason.contains("needs sm_"), "{}", d.reason);
                }
            }
        }
        let pascal = probe_list(CUDA_BF16, Ok(vec![dev("GTX 1080", (6, 1))]));
        assert!(
            pascal.devices[0].reason.contains("sm_61")
                && pascal.devices[0].reason.contains("--backend wgpu"),
            "{}",
            pascal.devices[0].reason
        );
    }

    #[test]
    fn no_driver_is_one_explained_zero() {
        let r = probe_list(CUDA_BF16, Err("no NVIDIA driver (libcuda.so.1)".into()));
        assert_eq!(r.devices.len(), 1);
        assert_eq!(r.devices[0].score, 0);
        assert!(r.devices[0].reason.contains("libcuda.so.1"));
    }

    #[test]
    fn the_fake_device_list_reaches_the_flavor_probe() {
        // GPTOSS_FAKE_CUDA_DEVICES, parsed by gpu-detect, through the same path as `probe`.
        let list = gptoss_gpu_detect::fake_devices(
            r#"[{"name": "Tesla T4", "compute_capability": [7, 5]},
                {"name": "H100", "compute_capability": [9, 0]}]"#,
        );
        let r = probe_list(CUDA_BF16, list);
        let scores: Vec<u32> = r.devices.iter().map(|d| d.score).collect();
        assert_eq!(scores, vec![90, 50]);
    }
}
