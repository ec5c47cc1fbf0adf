//! gptoss-core: what every part of the engine shares.
//!
//! - [`DType`], [`Shape`], [`TensorDesc`]: what a tensor is, independent of where it lives.
//! - [`graph`]: the IR of one forward step, built by the model and executed by a backend.
//! - [`Backend`]: the contract a backend (linked in or a plugin) fulfils.
//! - [`host`]: a default executor for backends whose buffers live in host memory, so such a
//!   backend supplies only [`host::HostKernel`]s.
//! - [`mxfp4`], [`rope`], [`bf16`]: format and math facts every backend needs bit-exactly.

pub mod backend;
pub mod bf16;
pub mod collective;
pub mod config;
pub mod dtype;
pub mod error;
pub mod graph;
mod graph_check;
pub mod host;
pub mod mxfp4;
pub mod plugin;
pub mod rope;
pub mod shape;
pub mod tensor;

pub use backend::{decode_step, Backend, DecodeChain, DeviceReport, ProbeReport};
pub use dtype::DType;
pub use error::{Error, Result};
pub use graph::{Graph, Node, Op, Value, ValueId, ValueKind};
pub use shape::Shape;
pub use tensor::{BufferId, TensorDesc};
