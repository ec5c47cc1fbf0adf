//! A plugin that fails inside calls: its Add kernel panics, its Argmax kernel returns an
//! error, everything else (alloc, upload, download, LastRow) works. The host must report both
//! failures and keep using the plugin.

use gptoss_core::host::{HostExecutor, HostKernel, HostKernels, HostTensor};
use gptoss_core::plugin::{HostPlugin, PluginOptions};
use gptoss_core::{DeviceReport, Error, Op, ProbeReport, Result};

pub struct Kernels;

impl HostKernel for Kernels {
    fn run(&self, op: &Op, ins: &[&HostTensor], outs: &mut [&mut HostTensor]) -> Result<()> {
        match op {
            Op::Add => panic!("the add kernel blew a fuse"),
            Op::Argmax => Err(Error::Input("argmax refused".into())),
            Op::LastRow => {
                let (x, out) = (ins[0].f32()?, outs[0].f32_mut()?);
                out.copy_from_slice(&x[x.len() - out.len()..]);
                Ok(())
            }
            _ => Err(Error::Input(format!("{} is not implemented", op.name()))),
        }
    }
}

impl HostKernels for Kernels {
    fn kernel(&self, op: &Op) -> Option<&dyn HostKernel> {
        matches!(op, Op::Add | Op::Argmax | Op::LastRow).then_some(self as &dyn HostKernel)
    }
    fn probe(&self) -> ProbeReport {
        Self::probe_devices()
    }
}

impl HostPlugin for Kernels {
    const NAME: &'static str = "faulty";
    const VERSION: &'static str = "0.0.1";
    fn probe_devices() -> ProbeReport {
        ProbeReport {
            devices: vec![DeviceReport {
                name: "host".into(),
                score: 1,
                reason: "test plugin that fails on purpose".into(),
                ..Default::default()
            }],
        }
    }
    fn create(_: &PluginOptions) -> Result<Self> {
        Ok(Kernels)
    }
}

gptoss_core::export_backend!(HostExecutor<Kernels>);
