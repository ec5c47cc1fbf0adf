//! GET /v1/models and GET /v1/models/{id}.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::state::AppState;

fn model(st: &AppState) -> Value {
    json!({"id": st.model_id, "object": "model", "created": st.created, "owned_by": "gptoss",
           "max_model_len": st.max_context})
}

pub async fn list(State(st): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({"object": "list", "data": [model(&st)]}))
}

pub async fn one(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if id == st.model_id {
        Ok(Json(model(&st)))
    } else {
        Err(ApiError::not_found(format!("The model '{id}' does not exist")).param("model"))
    }
}
