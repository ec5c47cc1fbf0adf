//! GET /health: 200 while serving, 503 while shutting down.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use crate::state::AppState;

pub async fn handler(State(st): State<Arc<AppState>>) -> (StatusCode, Json<Value>) {
    if st.shutting_down.load(Ordering::Relaxed) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "shutting_down"})),
        )
    } else {
        (StatusCode::OK, Json(json!({"status": "ok"})))
    }
}
