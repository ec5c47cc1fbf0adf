//! gptoss-models: everything about gpt-oss that is not arithmetic.
//!
//! - [`config`]: config.json of gpt-oss-20b/120b and tiny test models.
//! - [`checkpoint`]: safetensors by mmap, single file or sharded; [`hub`]: local HF cache.
//! - [`weights`]: the published tensor names, checked and uploaded to a backend.
//! - [`graph_builder`]: one forward step as a graph; [`kv_cache`]: per-layer caches.
//! - [`sharding`]: one model split over several backends (tensor / expert parallel).
//! - [`model`]: a loaded model, sessions, greedy generation; [`batch`]: a paged KV cache and
//!   steps over many sequences at once; [`generation`]: one sequence
//!   advanced a forward pass at a time (the CLI's token loop and the server's engine).
//! - [`synthetic`]: random models of the real shapes; [`bench`], [`roofline`]: speed and its ceiling.
//! - [`tokenizer`]: o200k_harmony (tokenizer.json or built in); [`harmony`]: chat rendering and
//!   the streaming output parser; [`sampler`]: token sampling and stop strings.

pub mod batch;
pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod generation;
pub mod graph_builder;
pub mod harmony;
pub mod hub;
pub mod kv_cache;
pub mod model;
pub mod roofline;
pub mod sampler;
pub mod sharding;
pub mod synthetic;
pub mod tokenizer;
pub mod weights;

pub use config::GptOssConfig;
pub use graph_builder::LogitsWanted;
pub use model::{decode_chunk_sizes, Model, Session, DECODE_CHUNK, DECODE_CHUNK_MAX};
pub use sharding::{ShardPlan, Sharding};
