//! Server-sent events: a task writes event texts into a channel, the response body reads it.
//! When the client goes away the body (and the channel's receiver) is dropped, the writer's
//! next send fails, and the writer drops its generation: the engine frees the session.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;

pub type Sink = mpsc::Sender<String>;

/// Longest silence on a stream before an SSE comment is sent (to notice clients that left).
pub const KEEP_ALIVE: std::time::Duration = std::time::Duration::from_millis(250);

/// A `data:` event (`event:` line when `event` is given).
pub fn event(event: Option<&str>, data: &serde_json::Value) -> String {
    match event {
        Some(e) => format!("event: {e}\ndata: {data}\n\n"),
        None => format!("data: {data}\n\n"),
    }
}

/// A streaming response whose events come from `writer(sink)`.
pub fn stream<F, Fut>(writer: F) -> Response
where
    F: FnOnce(Sink) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<String>(64);
    tokio::spawn(writer(tx));
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|s| (Ok::<_, Infallible>(Bytes::from(s)), rx))
    });
    let mut r = Body::from_stream(body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}
