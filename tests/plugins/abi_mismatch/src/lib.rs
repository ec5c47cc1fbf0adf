//! A plugin built for another ABI version: `export_backend!`'s expansion with
//! `abi_version = GPTOSS_ABI_VERSION + 1`. The host must refuse it before reading anything else.

use gptoss_core::host::{HostExecutor, HostKernel, HostKernels};
use gptoss_core::plugin::abi::{GStr, GptossBackendVTable, GPTOSS_ABI_VERSION};
use gptoss_core::plugin::{sdk, HostPlugin, PluginOptions};
use gptoss_core::{Op, ProbeReport, Result};

pub struct Kernels;

impl HostKernels for Kernels {
    fn kernel(&self, _op: &Op) -> Option<&dyn HostKernel> {
        None
    }
    fn probe(&self) -> ProbeReport {
        ProbeReport::default()
    }
}

impl HostPlugin for Kernels {
    const NAME: &'static str = "abi-mismatch";
    const VERSION: &'static str = "0.0.1";
    fn probe_devices() -> ProbeReport {
        ProbeReport::default()
    }
    fn create(_: &PluginOptions) -> Result<Self> {
        Ok(Kernels)
    }
}

type B = HostExecutor<Kernels>;

static VTABLE: GptossBackendVTable = GptossBackendVTable {
    abi_version: GPTOSS_ABI_VERSION + 1,
    name: GStr::from_static("abi-mismatch"),
    version: GStr::from_static("0.0.1"),
    probe: sdk::probe::<B>,
    create: sdk::create::<B>,
    destroy: sdk::destroy::<B>,
    alloc: sdk::alloc::<B>,
    free: sdk::free::<B>,
    upload: sdk::upload::<B>,
    download: sdk::download::<B>,
    load_weight: sdk::load_weight::<B>,
    execute: sdk::execute::<B>,
    free_string: sdk::free_string,
    decode_chain: sdk::decode_chain::<B>,
};

#[no_mangle]
pub extern "C" fn gptoss_backend_entry() -> *const GptossBackendVTable {
    &VTABLE
}
