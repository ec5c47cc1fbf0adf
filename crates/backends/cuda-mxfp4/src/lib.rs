//! The cuda-mxfp4 plugin: NVIDIA Hopper and Blackwell (sm_90+). The kernels and the backend
//! live in gptoss-cuda (crates/backends/cuda); this crate only exports its Hopper/Blackwell
//! flavor as the plugin entry.

pub use gptoss_cuda::CudaMxfp4;

gptoss_core::export_backend!(gptoss_cuda::CudaMxfp4);
