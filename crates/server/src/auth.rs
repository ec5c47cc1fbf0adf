//! The optional API key: `Authorization: Bearer KEY`, compared in constant time.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::state::AppState;

/// True when `given` equals `key`; the time taken does not depend on where they differ.
pub fn key_matches(given: &[u8], key: &[u8]) -> bool {
    // ct_eq on slices is constant time for equal lengths and false at once otherwise; the
    // length of the key is not a secret worth hiding.
    given.ct_eq(key).into()
}

pub async fn require_key(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &st.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or("");
        if !key_matches(given.as_bytes(), key.as_bytes()) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::key_matches;

    #[test]
    fn keys_compare_exactly() {
        assert!(key_matches(b"secret", b"secret"));
        assert!(!key_matches(b"secreT", b"secret"));
        assert!(!key_matches(b"secret2", b"secret"));
        assert!(!key_matches(b"", b"secret"));
    }
}
