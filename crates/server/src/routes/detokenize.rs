//! POST /detokenize: `{"tokens": [ids]}` → `{"prompt": text}` (special tokens by name).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::state::AppState;

#[derive(Debug, Deserialize)]
pub struct DetokenizeBody {
    pub tokens: Vec<u32>,
}

pub async fn handler(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let b: DetokenizeBody = crate::body::parse(body)?;
    let text = st
        .tok
        .decode(&b.tokens)
        .map_err(|e| ApiError::bad_request(e.to_string()).param("tokens"))?;
    Ok(Json(json!({"prompt": text})))
}
