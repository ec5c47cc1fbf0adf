//! gptoss-server: an OpenAI-compatible HTTP server over one [`Model`].
//!
//! Routes: POST /v1/chat/completions, POST /v1/responses, GET /v1/models, GET /health,
//! GET /metrics, POST /tokenize, POST /detokenize. The [`engine`] thread owns the model and a
//! paged KV cache and batches the running requests into one forward pass per step; handlers render chats, queue them and map the harmony output to the
//! API shapes ([`output`]). Errors use OpenAI's JSON shape ([`error`]).

pub mod auth;
pub mod body;
pub mod engine;
pub mod error;
pub mod gen;
pub mod metrics;
pub mod output;
pub mod routes;
pub mod sse;
pub mod state;
pub mod tool_choice;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use gptoss_core::{Error, Result};
use gptoss_models::tokenizer::Tokenizer;
use gptoss_models::Model;

use crate::engine::EngineOptions;
use crate::error::ApiError;
use crate::state::AppState;

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub addr: SocketAddr,
    pub model_id: String,
    pub api_key: Option<String>,
    /// Longest prompt + output per request (capped by the model's own context).
    pub max_context: usize,
    pub engine: EngineOptions,
    /// How long in-flight requests may run after SIGINT/SIGTERM before they are ended.
    pub shutdown_timeout: Duration,
}

/// The routes over `state` (authentication on everything but /health).
pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/v1/chat/completions", post(routes::chat::handler))
        .route("/v1/responses", post(routes::responses::handler))
        .route("/v1/models", get(routes::models::list))
        .route("/v1/models/{id}", get(routes::models::one))
        .route("/metrics", get(routes::metrics::handler))
        .route("/tokenize", post(routes::tokenize::handler))
        .route("/detokenize", post(routes::detokenize::handler))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_key,
        ));
    Router::new()
        .route("/health", get(routes::health::handler))
        .merge(api)
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(DefaultBodyLimit::max(body::BODY_LIMIT))
        .with_state(state)
}

/// Loads nothing, blocks until shutdown: starts the engine on `model` and serves.
pub fn serve(model: Model, tok: Tokenizer, opts: ServeOptions) -> Result<()> {
    let max_context = model.config.context_limit(opts.max_context);
    let vocab_size = model.config.vocab_size;
    let mut engine_opts = opts.engine.clone();
    if engine_opts.kv_cache_tokens == 0 {
        engine_opts.kv_cache_tokens =
            engine::default_kv_cache_tokens(engine_opts.max_batch, max_context, &model.config);
    }
    let kv_mib = engine::kv_bytes_per_position(&model.config) as f64 / (1 << 20) as f64;
    let engine = engine::start(model, engine_opts)?;
    let kv = engine.kv_capacity();
    eprintln!(
        "gptoss serve: KV cache of {kv} positions ({} pages of {}, {:.0} MiB) shared by up to \
         {} requests",
        engine.stats.kv_pages_total(),
        gptoss_models::batch::PAGE_SIZE,
        kv as f64 * kv_mib,
        opts.engine.max_batch.max(1)
    );
    if kv < max_context {
        eprintln!(
            "gptoss serve: requests are limited to {kv} positions by --kv-cache-tokens \
             (max_context is {max_context})"
        );
    }
    let tok: &'static Tokenizer = Box::leak(Box::new(tok));
    let state = Arc::new(AppState::new(
        engine,
        tok,
        opts.model_id.clone(),
        max_context,
        vocab_size,
        opts.api_key.clone(),
    ));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .build()
        .map_err(|e| Error::Input(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(run(state, opts))
}

async fn run(state: Arc<AppState>, opts: ServeOptions) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(opts.addr)
        .await
        .map_err(|e| Error::Input(format!("cannot listen on {}: {e}", opts.addr)))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::Input(e.to_string()))?;
    // The one line tests and scripts wait for (stderr).
    eprintln!(
        "gptoss serve: listening on http://{local} (model {})",
        opts.model_id
    );
    let st = state.clone();
    let timeout = opts.shutdown_timeout;
    let shutdown = async move {
        wait_for_signal().await;
        eprintln!("gptoss serve: shutting down; finishing in-flight requests (up to {timeout:?})");
        st.shutting_down.store(true, Ordering::Relaxed);
        let abort = st.engine.abort.clone();
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            // Still running: end the streams cleanly (finish_reason "length", incomplete).
            abort.store(true, Ordering::Relaxed);
        });
    };
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| Error::Input(format!("server error: {e}")))?;
    eprintln!("gptoss serve: stopped");
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

#[cfg(test)]
mod output_tests;
#[cfg(test)]
mod tool_choice_tests;
