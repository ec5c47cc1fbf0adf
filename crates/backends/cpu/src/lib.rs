//! The exact f32 reference backend of gptoss.
//!
//! [`CpuKernels`] supplies one [`HostKernel`](gptoss_core::host::HostKernel) per graph op;
//! [`HostExecutor`] owns the buffers and walks the graph. All arithmetic is plain f32 (no
//! intermediate bf16 rounding), matching transformers run in float32. Work that matters
//! (matmuls, attention, experts) runs on a dedicated rayon thread pool owned by the kernels,
//! so the global rayon pool is left alone.

pub mod kernels;
pub mod math;
mod pool;

use gptoss_core::host::HostExecutor;

pub use kernels::CpuKernels;
pub use pool::{available_cores, Pool};

/// The CPU backend: the shared host executor driving the CPU kernels.
pub type CpuBackend = HostExecutor<CpuKernels>;

/// A CPU backend on `threads` worker threads (0 = one per available core).
pub fn cpu_backend(threads: usize) -> CpuBackend {
    HostExecutor::new("cpu", CpuKernels::new(threads))
}

impl gptoss_core::plugin::HostPlugin for CpuKernels {
    const NAME: &'static str = "cpu";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    fn probe_devices() -> gptoss_core::ProbeReport {
        // threads 0 = what an instance gets by default: one per core
        gptoss_core::host::HostKernels::probe(&CpuKernels::new(0))
    }
    fn create(options: &gptoss_core::plugin::PluginOptions) -> gptoss_core::Result<Self> {
        Ok(CpuKernels::new(options.threads))
    }
}

// Built as a cdylib this crate is also the plugin libgptoss_backend_cpu.so; linked into the
// gptoss binary as an rlib it is the built-in fallback.
gptoss_core::export_backend!(gptoss_core::host::HostExecutor<CpuKernels>);
