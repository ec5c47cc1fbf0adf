//! A plugin whose probe says it cannot run here: one device, score 0, with its reason.

use gptoss_core::host::{HostExecutor, HostKernel, HostKernels};
use gptoss_core::plugin::{HostPlugin, PluginOptions};
use gptoss_core::{DeviceReport, Op, ProbeReport, Result};

pub struct Kernels;

impl HostKernels for Kernels {
    fn kernel(&self, _op: &Op) -> Option<&dyn HostKernel> {
        None
    }
    fn probe(&self) -> ProbeReport {
        Self::probe_devices()
    }
}

impl HostPlugin for Kernels {
    const NAME: &'static str = "zero-score";
    const VERSION: &'static str = "0.0.1";
    fn probe_devices() -> ProbeReport {
        ProbeReport {
            devices: vec![DeviceReport {
                name: "temporal displacement unit".into(),
                score: 0,
                reason: "needs a flux capacitor, found none".into(),
                ..Default::default()
            }],
        }
    }
    fn create(_: &PluginOptions) -> Result<Self> {
        Ok(Kernels)
    }
}

gptoss_core::export_backend!(HostExecutor<Kernels>);
