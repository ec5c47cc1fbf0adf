//! POST /tokenize: `{"prompt": "text"}` (ordinary text, special tokens not parsed) or
//! `{"messages": [...], "tools": [...], "reasoning_effort": "..."}` (the harmony prompt).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::Json;
use gptoss_models::harmony::{ChatMessage, ReasoningEffort, RenderOptions, Tool};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::state::AppState;

#[derive(Debug, Deserialize)]
pub struct TokenizeBody {
    #[serde(default)]
    pub prompt: Option<String>,
    #[serde(default)]
    pub messages: Option<Vec<ChatMessage>>,
    #[serde(default)]
    pub tools: Option<Vec<Tool>>,
    #[serde(default)]
    pub reasoning_effort: Option<ReasoningEffort>,
}

pub async fn handler(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let b: TokenizeBody = crate::body::parse(body)?;
    let tokens = match (b.prompt, b.messages) {
        (Some(p), None) => st.tok.encode(&p)?,
        (None, Some(m)) => {
            let mut opts = RenderOptions::default();
            if let Some(e) = b.reasoning_effort {
                opts.reasoning_effort = e;
            }
            gptoss_models::harmony::render_prompt(st.tok, &m, &b.tools.unwrap_or_default(), &opts)?
        }
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of 'prompt' (text) or 'messages' (a chat)",
            ))
        }
    };
    Ok(Json(json!({
        "count": tokens.len(),
        "tokens": tokens,
        "max_model_len": st.max_context,
    })))
}
