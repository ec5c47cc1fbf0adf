//! The cuda-bf16 plugin: NVIDIA Volta to Ada (sm_70..sm_89), also usable on sm_90+ when forced.
//! The kernels and the backend live in gptoss-cuda (crates/backends/cuda); this crate only
//! exports its portable flavor as the plugin entry.

pub use gptoss_cuda::CudaBf16;

gptoss_core::export_backend!(gptoss_cuda::CudaBf16);
