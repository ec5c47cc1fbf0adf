//! `gptoss serve`: the OpenAI-compatible HTTP server (crates/server).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use clap::Args as ClapArgs;
use gptoss_core::{Error, Result};
use gptoss_server::engine::EngineOptions;
use gptoss_server::ServeOptions;

use crate::common::ModelArgs;
use crate::textgen::load_tokenizer;

#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to listen on (only this machine unless told otherwise).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port (0 = any free port; the chosen one is printed).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// API key clients must send as `Authorization: Bearer KEY`; default $GPTOSS_API_KEY;
    /// without either, no key is required.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Most requests batched together: each engine step is one forward pass over all of them
    /// (the others wait in the queue).
    #[arg(long, default_value_t = 64)]
    pub max_batch: usize,
    /// Most requests waiting; more are answered 429 with Retry-After.
    #[arg(long, default_value_t = 256)]
    pub queue: usize,
    /// Longest prompt + output per request; default the config's max_context (0 = the model's).
    #[arg(long)]
    pub max_context: Option<usize>,
    /// Prompt tokens prefilled per step, shared by the prompts being prefilled; the running
    /// requests' next tokens go in the same step, so a long prompt never stalls them.
    #[arg(long, default_value_t = 256)]
    pub prefill_chunk: usize,
    /// KV-cache positions shared by all requests (paged, 16 positions a page), allocated at
    /// start. A request starts only when its prompt + max_tokens fit beside the running
    /// ones (else it waits in the queue); one that can never fit is refused with 400.
    /// Default: max_batch x max_context, within 90% of the GPU memory the weights leave (on a
    /// device without a memory size: at most 65536 positions and 4 GiB of f32 keys and
    /// values), but never below max_context.
    #[arg(long)]
    pub kv_cache_tokens: Option<usize>,
    /// Seconds in-flight requests may still run after SIGINT/SIGTERM before they are ended.
    #[arg(long, default_value_t = 30)]
    pub shutdown_timeout: u64,
    /// The model id clients use (default: the --model argument).
    #[arg(long)]
    pub served_model_name: Option<String>,
}

pub fn run(a: Args) -> Result<()> {
    let api_key = a
        .api_key
        .clone()
        .or_else(|| std::env::var("GPTOSS_API_KEY").ok())
        .filter(|k| !k.is_empty());
    if a.max_batch == 0 || a.queue == 0 || a.prefill_chunk == 0 || a.kv_cache_tokens == Some(0) {
        return Err(Error::Input(
            "--max-batch, --queue, --prefill-chunk and --kv-cache-tokens must be at least 1".into(),
        ));
    }
    let dir = gptoss_models::hub::resolve_model_dir(&a.model.model)?;
    let tok = load_tokenizer(&dir)?;
    let (model, cfg, room) = a.model.load_with_room()?;
    let max_context = a.max_context.unwrap_or(cfg.max_context);
    let kv_cache_tokens = match (a.kv_cache_tokens, room) {
        (Some(n), _) => n,
        // On a GPU: max_batch full contexts, within 90% of the memory the weights leave.
        (None, Some(room)) => {
            let ctx = model.config.context_limit(max_context);
            a.max_batch.saturating_mul(ctx).min(room / 10 * 9).max(ctx)
        }
        // 0: the default for the effective max_context (gptoss_server::serve).
        (None, None) => 0,
    };
    let opts = ServeOptions {
        addr: SocketAddr::new(a.host, a.port),
        model_id: a
            .served_model_name
            .clone()
            .unwrap_or_else(|| a.model.model.clone()),
        api_key,
        max_context,
        engine: EngineOptions {
            max_batch: a.max_batch,
            queue: a.queue,
            prefill_chunk: a.prefill_chunk,
            kv_cache_tokens,
        },
        shutdown_timeout: Duration::from_secs(a.shutdown_timeout),
    };
    gptoss_server::serve(model, tok, opts)
}
