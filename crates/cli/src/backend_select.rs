//! Choosing the backend that runs the model.

use gptoss_core::config::EngineConfig;
use gptoss_core::{Backend, Error, Result};

/// Backends built into this binary.
pub const BUILT_IN: &[&str] = &["cpu"];

pub fn open(cfg: &EngineConfig) -> Result<Box<dyn Backend>> {
    match cfg.backend.as_str() {
        "auto" | "cpu" => Ok(Box::new(gptoss_backend_cpu::cpu_backend(cfg.threads))),
        other => Err(Error::backend(
            other,
            format!("unknown backend; available here: {}", BUILT_IN.join(", ")),
        )),
    }
}
