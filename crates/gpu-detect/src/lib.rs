//! NVIDIA GPU detection through the CUDA driver, loaded at run time.
//!
//! [`cuda_devices`] opens `libcuda` with `dlopen` (cudarc's dynamic loading, driver API only),
//! so this crate builds without a CUDA toolkit and a binary using it runs on machines with no
//! NVIDIA driver: there it returns `Err` with the reason, never panics.
//!
//! Testing aid: when `GPTOSS_FAKE_CUDA_DEVICES` is set, its value (a JSON list of devices) is
//! returned instead of asking the driver, e.g.
//! `[{"name": "NVIDIA GeForce RTX 3090", "compute_capability": [8, 6], "memory_bytes": 25769803776}]`
//! (`index` defaults to the position in the list, `driver_version` to "fake"). The value
//! `{"error": "some reason"}` simulates a machine without devices. It is meant for tests and
//! for trying auto-selection on hardware one does not have; never set it in production.

use std::panic::{catch_unwind, AssertUnwindSafe};

use serde::{Deserialize, Serialize};

/// The environment variable that replaces detection by a simulated device list (tests only).
pub const FAKE_ENV: &str = "GPTOSS_FAKE_CUDA_DEVICES";

/// One CUDA device as the driver reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CudaDevice {
    /// Ordinal as CUDA numbers it (`CUDA_VISIBLE_DEVICES` applies).
    pub index: u32,
    pub name: String,
    /// (major, minor): (9, 0) is sm_90.
    pub compute_capability: (u32, u32),
    pub memory_bytes: u64,
    /// The driver's CUDA version, e.g. "12.8".
    pub driver_version: String,
}

impl CudaDevice {
    /// "sm_90", "sm_120".
    pub fn sm(&self) -> String {
        format!(
            "sm_{}{}",
            self.compute_capability.0, self.compute_capability.1
        )
    }
}

#[derive(Deserialize)]
struct FakeDevice {
    index: Option<u32>,
    name: String,
    compute_capability: (u32, u32),
    #[serde(default)]
    memory_bytes: u64,
    driver_version: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Fake {
    Devices(Vec<FakeDevice>),
    Error { error: String },
}

/// The message when no driver library can be opened.
pub const NO_DRIVER: &str = "no NVIDIA driver found (libcuda.so.1 could not be loaded)";

/// Every CUDA device on this machine, or why there are none (no driver, driver without devices,
/// driver error). Honours [`FAKE_ENV`].
pub fn cuda_devices() -> Result<Vec<CudaDevice>, String> {
    if let Some(v) = std::env::var_os(FAKE_ENV) {
        return fake_devices(&v.to_string_lossy());
    }
    // SAFETY: only tries to dlopen the driver library (and drops it again).
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(NO_DRIVER.to_string());
    }
    // cudarc panics on a missing symbol (a very old or broken driver): keep that inside.
    match catch_unwind(AssertUnwindSafe(query_driver)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown error".into());
            Err(format!("the NVIDIA driver could not be used: {msg}"))
        }
    }
}

/// Parse a [`FAKE_ENV`] value.
pub fn fake_devices(json: &str) -> Result<Vec<CudaDevice>, String> {
    let fake: Fake = serde_json::from_str(json).map_err(|e| {
        format!("{FAKE_ENV} is not a JSON list of devices ({e}); e.g. [{{\"name\": \"H100\", \"compute_capability\": [9, 0]}}]")
    })?;
    match fake {
        Fake::Error { error } => Err(error),
        Fake::Devices(list) => Ok(list
            .into_iter()
            .enumerate()
            .map(|(i, d)| CudaDevice {
                index: d.index.unwrap_or(i as u32),
                name: d.name,
                compute_capability: d.compute_capability,
                memory_bytes: d.memory_bytes,
                driver_version: d.driver_version.unwrap_or_else(|| "fake".into()),
            })
            .collect()),
    }
}

/// "12.8" from the driver's 12080.
fn version_text(v: i32) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

fn query_driver() -> Result<Vec<CudaDevice>, String> {
    use cudarc::driver::result::{self, device};
    use cudarc::driver::sys::{CUdevice_attribute, CUresult};

    if let Err(e) = result::init() {
        return Err(if e.0 == CUresult::CUDA_ERROR_NO_DEVICE {
            "the NVIDIA driver is loaded but reports no CUDA device".to_string()
        } else {
            format!("the NVIDIA driver failed to initialise: {e}")
        });
    }
    let mut driver = 0i32;
    // SAFETY: cuInit succeeded; the out-pointer is valid.
    let driver_version = match unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut driver) } {
        CUresult::CUDA_SUCCESS => version_text(driver),
        _ => "unknown".to_string(),
    };
    let count = device::get_count().map_err(|e| format!("cuDeviceGetCount failed: {e}"))?;
    if count == 0 {
        return Err("the NVIDIA driver is loaded but reports no CUDA device".into());
    }
    (0..count)
        .map(|i| {
            let dev = device::get(i).map_err(|e| format!("cuDeviceGet({i}) failed: {e}"))?;
            let name = device::get_name(dev).map_err(|e| format!("device {i}: {e}"))?;
            // SAFETY: `dev` comes from cuDeviceGet.
            let (major, minor, mem) = unsafe {
                (
                    device::get_attribute(
                        dev,
                        CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
                    ),
                    device::get_attribute(
                        dev,
                        CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
                    ),
                    device::total_mem(dev),
                )
            };
            let cc = |r: Result<i32, _>| {
                r.map(|v| v.max(0) as u32)
                    .map_err(|e| format!("device {i}: compute capability: {e}"))
            };
            Ok(CudaDevice {
                index: i as u32,
                name,
                compute_capability: (cc(major)?, cc(minor)?),
                memory_bytes: mem.map(|m| m as u64).unwrap_or(0),
                driver_version: driver_version.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_list_fills_defaults() {
        let d = fake_devices(
            r#"[{"name": "RTX 3090", "compute_capability": [8, 6], "memory_bytes": 100},
                {"index": 7, "name": "H100", "compute_capability": [9, 0], "driver_version": "12.8"}]"#,
        )
        .unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(
            (d[0].index, d[0].sm(), d[0].memory_bytes),
            (0, "sm_86".into(), 100)
        );
        assert_eq!(d[0].driver_version, "fake");
        assert_eq!(
            (d[1].index, d[1].sm(), d[1].driver_version.as_str()),
            (7, "sm_90".into(), "12.8")
        );
    }

    #[test]
    fn fake_error_and_bad_json() {
        assert_eq!(
            fake_devices(r#"{"error": "driver too old"}"#).unwrap_err(),
            "driver too old"
        );
        let e = fake_devices("[{\"name\": 3}]").unwrap_err();
        assert!(e.contains(FAKE_ENV), "{e}");
    }

    #[test]
    fn driver_version_is_major_dot_minor() {
        assert_eq!(version_text(12080), "12.8");
        assert_eq!(version_text(13000), "13.0");
        assert_eq!(version_text(11040), "11.4");
    }

    #[test]
    fn real_detection_returns_and_never_panics() {
        // Here (no NVIDIA driver) this is Err with the reason; on a GPU machine, the devices.
        if std::env::var_os(FAKE_ENV).is_some() {
            return;
        }
        match cuda_devices() {
            Ok(devs) => {
                assert!(!devs.is_empty());
                assert!(devs
                    .iter()
                    .all(|d| d.compute_capability.0 >= 3 && !d.name.is_empty()));
            }
            Err(e) => assert!(e.contains("NVIDIA"), "{e}"),
        }
    }
}
