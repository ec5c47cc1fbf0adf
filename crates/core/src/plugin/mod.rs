//! Backend plugins: the C ABI ([`abi`]), its Rust encodings ([`codec`]), the SDK a plugin
//! author uses ([`sdk`], [`crate::export_backend!`]), the host-side loader ([`loader`]),
//! the registry that finds plugins and picks one ([`registry`]), and the scoring rules of the
//! planned GPU backends ([`scoring`]).

pub mod abi;
pub mod codec;
pub mod loader;
pub mod registry;
pub mod scoring;
pub mod sdk;

pub use loader::{Plugin, PluginBackendHandle};
pub use sdk::{HostPlugin, PluginBackend, PluginOptions};
