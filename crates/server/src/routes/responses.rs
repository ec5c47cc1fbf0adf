//! POST /v1/responses: the Responses API, plain and streamed (response.created,
//! response.output_item.added, response.reasoning_text.delta, response.output_text.delta,
//! response.function_call_arguments.delta/done, response.output_item.done,
//! response.completed with usage). Stateless, plus `previous_response_id` for responses kept
//! in memory.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use gptoss_models::harmony::{ChatMessage, ReasoningEffort};
use serde::Deserialize;
use serde_json::{json, Value};

use super::responses_events::Builder;
use super::responses_input::{self, Input, RespTool};
use crate::error::ApiError;
use crate::gen::{self, Job, Sampling, Step};
use crate::sse;
use crate::state::{unix_now, AppState};
use crate::tool_choice::apply_tool_choice;

#[derive(Debug, Deserialize, Default)]
pub struct ReasoningOpt {
    #[serde(default)]
    pub effort: Option<ReasoningEffort>,
}

#[derive(Debug, Deserialize)]
pub struct ResponsesBody {
    #[serde(default)]
    pub model: Option<String>,
    pub input: Input,
    #[serde(default)]
    pub instructions: Option<String>,
    #[serde(default)]
    pub tools: Option<Vec<RespTool>>,
    #[serde(default)]
    pub tool_choice: Option<Value>,
    #[serde(default)]
    pub reasoning: Option<ReasoningOpt>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub max_output_tokens: Option<usize>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub store: Option<bool>,
    #[serde(default)]
    pub previous_response_id: Option<String>,
}

pub async fn handler(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let b: ResponsesBody = crate::body::parse(body)?;
    let mut history = match &b.previous_response_id {
        Some(id) => st.stored_response(id).ok_or_else(|| {
            ApiError::not_found(format!("no stored response with id '{id}'"))
                .param("previous_response_id")
        })?,
        None => Vec::new(),
    };
    history.extend(responses_input::messages(b.input)?);
    let echo_tools = serde_json::to_value(b.tools.as_deref().unwrap_or_default())
        .unwrap_or_else(|_| serde_json::json!([]));
    let echo_choice = b
        .tool_choice
        .clone()
        .unwrap_or_else(|| serde_json::json!("auto"));
    let tools = responses_input::tools(b.tools.unwrap_or_default())?;
    let (tools, must_call) = apply_tool_choice(b.tool_choice.as_ref(), tools)?;
    let mut messages = Vec::new();
    if let Some(i) = &b.instructions {
        messages.push(ChatMessage::developer(i.clone()));
    }
    messages.extend(history.iter().cloned());
    let job = Job {
        messages,
        tools,
        effort: b.reasoning.and_then(|r| r.effort),
        sampling: Sampling {
            temperature: b.temperature,
            top_p: b.top_p,
            seed: b.seed,
            ..Default::default()
        },
        max_tokens: b.max_output_tokens,
        stop: Vec::new(),
        must_call,
    };
    let params = job.sampling.params()?;
    let (prompt, max_tokens) = gen::prepare(&st, &job)?;
    let g = gen::start(&st, prompt, max_tokens, params, &job.stop, job.must_call)?;
    let id = st.new_id("resp_");
    let model = b.model.unwrap_or_else(|| st.model_id.clone());
    let store = b.store.unwrap_or(true);
    let builder = Builder::new(
        st.clone(),
        id,
        model,
        b.instructions,
        echo_tools,
        echo_choice,
    );
    if b.stream.unwrap_or(false) {
        return Ok(sse::stream(move |sink| {
            stream(st, g, builder, sink, history, store)
        }));
    }
    let mut builder = builder;
    let mut g = g;
    while let Some(step) = g.next().await {
        match step {
            Step::Pieces(p) => {
                for piece in p {
                    builder.push(piece);
                }
            }
            Step::End(finish, usage) => {
                let resp = builder.finish(finish, usage);
                if store {
                    history.push(gen::reply_message(&g.mapper.reply));
                    st.store_response(builder.id.clone(), history);
                }
                return Ok(axum::Json(resp).into_response());
            }
            Step::Error(e) => return Err(e),
        }
    }
    Err(ApiError::internal("the generation ended without a result"))
}

async fn stream(
    st: Arc<AppState>,
    mut g: gen::Generation,
    mut b: Builder,
    sink: sse::Sink,
    mut history: Vec<ChatMessage>,
    store: bool,
) {
    let created = json!({"type": "response.created", "response": b.snapshot("in_progress")});
    for ev in [created] {
        if send(&sink, &mut b, ev).await.is_err() {
            return;
        }
    }
    loop {
        // As in chat: SSE comments during silence notice a client that left.
        let step = tokio::select! {
            s = g.next() => s,
            _ = tokio::time::sleep(sse::KEEP_ALIVE) => {
                if sink.send(": keep-alive\n\n".to_string()).await.is_err() {
                    return;
                }
                continue;
            }
            _ = sink.closed() => return,
        };
        let Some(step) = step else { return };
        match step {
            Step::Pieces(p) => {
                for piece in p {
                    for ev in b.push(piece) {
                        if send(&sink, &mut b, ev).await.is_err() {
                            return; // the client left: dropping `g` cancels the request
                        }
                    }
                }
            }
            Step::End(finish, usage) => {
                let resp = b.finish(finish, usage);
                let mut events = std::mem::take(&mut b.events);
                let kind = if resp["status"] == "completed" {
                    "response.completed"
                } else {
                    "response.incomplete"
                };
                events.push(json!({"type": kind, "response": resp}));
                for ev in events {
                    let _ = send(&sink, &mut b, ev).await;
                }
                if store {
                    history.push(gen::reply_message(&g.mapper.reply));
                    st.store_response(b.id.clone(), history);
                }
                return;
            }
            Step::Error(e) => {
                let mut ev = e.body();
                ev["type"] = json!("error");
                ev["message"] = json!(e.message);
                let _ = send(&sink, &mut b, ev).await;
                return;
            }
        }
    }
}

async fn send(sink: &sse::Sink, b: &mut Builder, mut ev: Value) -> Result<(), ()> {
    ev["sequence_number"] = json!(b.next_seq());
    let kind = ev["type"].as_str().unwrap_or("message").to_string();
    sink.send(sse::event(Some(&kind), &ev))
        .await
        .map_err(|_| ())
}

/// Seconds since the epoch, for `created_at`.
pub fn created_at() -> u64 {
    unix_now()
}
