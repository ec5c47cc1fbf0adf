//! POST /v1/chat/completions.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use gptoss_models::harmony::{ChatMessage, ReasoningEffort, Tool};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::gen::{self, Finish, Job, Sampling, Step, Usage};
use crate::output::{Piece, Reply};
use crate::sse;
use crate::state::{unix_now, AppState};
use crate::tool_choice::apply_tool_choice;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

impl StopField {
    pub fn list(self) -> Vec<String> {
        match self {
            StopField::One(s) => vec![s],
            StopField::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize, Default)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct ChatBody {
    #[serde(default)]
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub tools: Option<Vec<Tool>>,
    #[serde(default)]
    pub tool_choice: Option<Value>,
    #[serde(default)]
    pub reasoning_effort: Option<ReasoningEffort>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub top_k: Option<usize>,
    #[serde(default)]
    pub min_p: Option<f32>,
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
    #[serde(default)]
    pub presence_penalty: Option<f32>,
    #[serde(default)]
    pub repetition_penalty: Option<f32>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub stop: Option<StopField>,
    #[serde(default)]
    pub max_tokens: Option<usize>,
    #[serde(default)]
    pub max_completion_tokens: Option<usize>,
    #[serde(default)]
    pub n: Option<u32>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Extension (as vLLM's): the generated token ids in the response (`token_ids` of the
    /// choice; when streaming, on the chunk with the finish_reason).
    #[serde(default)]
    pub return_token_ids: Option<bool>,
}

pub async fn handler(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let b: ChatBody = crate::body::parse(body)?;
    if b.n.unwrap_or(1) != 1 {
        return Err(ApiError::bad_request("only n = 1 is supported")
            .param("n")
            .code("invalid_value"));
    }
    let (tools, must_call) =
        apply_tool_choice(b.tool_choice.as_ref(), b.tools.unwrap_or_default())?;
    let job = Job {
        messages: b.messages,
        tools,
        effort: b.reasoning_effort,
        sampling: Sampling {
            temperature: b.temperature,
            top_p: b.top_p,
            top_k: b.top_k,
            min_p: b.min_p,
            frequency_penalty: b.frequency_penalty,
            presence_penalty: b.presence_penalty,
            repetition_penalty: b.repetition_penalty,
            seed: b.seed,
        },
        max_tokens: b.max_completion_tokens.or(b.max_tokens),
        stop: b.stop.map(StopField::list).unwrap_or_default(),
        must_call,
    };
    let params = job.sampling.params()?;
    let (prompt, max_tokens) = gen::prepare(&st, &job)?;
    let g = gen::start(&st, prompt, max_tokens, params, &job.stop, job.must_call)?;
    let id = st.new_id("chatcmpl-");
    let model = b.model.unwrap_or_else(|| st.model_id.clone());
    let ids = b.return_token_ids.unwrap_or(false);
    if b.stream.unwrap_or(false) {
        let usage = b
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
        return Ok(sse::stream(move |sink| {
            stream(g, sink, id, model, usage, ids)
        }));
    }
    let mut g = g;
    let (reply, finish, usage) = loop {
        match g.next().await {
            Some(Step::Pieces(_)) => {}
            Some(Step::End(f, u)) => break (g.mapper.reply.clone(), f, u),
            Some(Step::Error(e)) => return Err(e),
            None => return Err(ApiError::internal("the generation ended without a result")),
        }
    };
    let mut body = completion(&id, &model, &reply, finish, usage);
    if ids {
        body["choices"][0]["token_ids"] = json!(g.token_ids);
    }
    Ok(axum::Json(body).into_response())
}

fn usage_json(u: Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt,
        "completion_tokens": u.completion,
        "total_tokens": u.prompt + u.completion,
    })
}

fn completion(id: &str, model: &str, r: &Reply, finish: Finish, u: Usage) -> Value {
    let calls: Vec<Value> = r
        .calls
        .iter()
        .map(|c| {
            json!({"id": c.id, "type": "function",
                   "function": {"name": c.name, "arguments": c.arguments}})
        })
        .collect();
    let mut message = json!({
        "role": "assistant",
        "content": if r.content.is_empty() && !calls.is_empty() { Value::Null } else { json!(r.content) },
    });
    if !r.reasoning.is_empty() {
        message["reasoning_content"] = json!(r.reasoning);
    }
    if !calls.is_empty() {
        message["tool_calls"] = json!(calls);
    }
    json!({
        "id": id,
        "object": "chat.completion",
        "created": unix_now(),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish.as_str(), "logprobs": null}],
        "usage": usage_json(u),
    })
}

fn chunk(id: &str, model: &str, created: u64, delta: Value, finish: Option<&str>) -> Value {
    json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}],
    })
}

fn delta(p: Piece) -> Option<Value> {
    Some(match p {
        Piece::Reasoning(t) => json!({"reasoning_content": t}),
        Piece::Content(t) => json!({"content": t}),
        Piece::ToolStart { index, id, name } => json!({"tool_calls": [{
            "index": index, "id": id, "type": "function",
            "function": {"name": name, "arguments": ""}}]}),
        Piece::ToolArgs { index, text } => {
            json!({"tool_calls": [{"index": index, "function": {"arguments": text}}]})
        }
        Piece::ToolEnd { .. } => return None,
    })
}

async fn stream(
    mut g: gen::Generation,
    sink: sse::Sink,
    id: String,
    model: String,
    usage: bool,
    ids: bool,
) {
    let created = unix_now();
    let send = |v: Value| sse::event(None, &v);
    let mut first = Some(chunk(
        &id,
        &model,
        created,
        json!({"role": "assistant", "content": ""}),
        None,
    ));
    loop {
        // Silence (the model writing markup, or a long prefill) sends an SSE comment now and
        // then, so that a client that left is noticed (the write fails) and its request ends.
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
        let Some(step) = step else { break };
        // The role chunk goes out with the first token.
        if let Some(f) = first.take() {
            if sink.send(send(f)).await.is_err() {
                return;
            }
        }
        match step {
            Step::Pieces(pieces) => {
                for d in pieces.into_iter().filter_map(delta) {
                    if sink
                        .send(send(chunk(&id, &model, created, d, None)))
                        .await
                        .is_err()
                    {
                        return; // the client left: dropping `g` cancels the request
                    }
                }
            }
            Step::End(finish, u) => {
                let mut last = chunk(&id, &model, created, json!({}), Some(finish.as_str()));
                if ids {
                    last["choices"][0]["token_ids"] = json!(g.token_ids);
                }
                let _ = sink.send(send(last)).await;
                if usage {
                    let mut c = chunk(&id, &model, created, json!({}), None);
                    c["choices"] = json!([]);
                    c["usage"] = usage_json(u);
                    let _ = sink.send(send(c)).await;
                }
                break;
            }
            Step::Error(e) => {
                let _ = sink.send(send(e.body())).await;
                break;
            }
        }
    }
    let _ = sink.send("data: [DONE]\n\n".to_string()).await;
}
