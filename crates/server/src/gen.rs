//! What both generation APIs share: rendering the chat, the context check, sampling settings,
//! queueing the request, and turning engine events into [`Piece`]s and an ending.

use std::sync::Arc;

use gptoss_models::harmony::{ChatMessage, ReasoningEffort, RenderOptions, Tool};
use gptoss_models::sampler::SamplingParams;
use gptoss_models::tokenizer::STOP_TOKENS;
use tokio::sync::mpsc::{self, UnboundedReceiver};

use crate::engine::{End, Event, GenRequest, SubmitError};
use crate::error::ApiError;
use crate::output::{OutputMapper, Piece, Reply};
use crate::state::AppState;
use crate::tool_choice::CallConstraint;

/// Why a reply ended, as the APIs report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    Stop,
    Length,
    ToolCalls,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
            Finish::ToolCalls => "tool_calls",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt: usize,
    pub completion: usize,
}

pub enum Step {
    Pieces(Vec<Piece>),
    End(Finish, Usage),
    Error(ApiError),
}

/// Sampling settings common to both APIs (None = the API's default).
#[derive(Debug, Clone, Default)]
pub struct Sampling {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub min_p: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub seed: Option<u64>,
}

impl Sampling {
    pub fn params(&self) -> Result<SamplingParams, ApiError> {
        let d = SamplingParams::default();
        let p = SamplingParams {
            temperature: self.temperature.unwrap_or(d.temperature),
            top_p: self.top_p.unwrap_or(d.top_p),
            top_k: self.top_k.unwrap_or(d.top_k),
            min_p: self.min_p.unwrap_or(d.min_p),
            frequency_penalty: self.frequency_penalty.unwrap_or(d.frequency_penalty),
            presence_penalty: self.presence_penalty.unwrap_or(d.presence_penalty),
            repetition_penalty: self.repetition_penalty.unwrap_or(d.repetition_penalty),
            seed: self.seed,
            max_tokens: None,
            stop: Vec::new(),
        };
        p.validate()
            .map_err(|e| ApiError::bad_request(e.to_string()).code("invalid_value"))?;
        Ok(p)
    }
}

/// A chat to run.
pub struct Job {
    pub messages: Vec<ChatMessage>,
    pub tools: Vec<Tool>,
    pub effort: Option<ReasoningEffort>,
    pub sampling: Sampling,
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    /// The functions the reply must call (tool_choice "required" or named); None: free.
    pub must_call: Option<Vec<String>>,
}

/// Renders the chat and checks the context; returns the prompt ids and the token budget.
pub fn prepare(st: &AppState, job: &Job) -> Result<(Vec<u32>, usize), ApiError> {
    if job.messages.is_empty() {
        return Err(ApiError::bad_request("messages must not be empty").param("messages"));
    }
    let mut opts = RenderOptions::default();
    if let Some(e) = job.effort {
        opts.reasoning_effort = e;
    }
    let prompt = gptoss_models::harmony::render_prompt(st.tok, &job.messages, &job.tools, &opts)?;
    let max_tokens = match job.max_tokens {
        Some(0) => {
            return Err(ApiError::bad_request("max_tokens must be at least 1")
                .param("max_tokens")
                .code("invalid_value"))
        }
        Some(n) => n,
        None => st
            .max_context
            .min(st.engine.kv_capacity())
            .saturating_sub(prompt.len()),
    };
    let needed = prompt.len().saturating_add(max_tokens);
    if needed > st.max_context || max_tokens == 0 {
        return Err(ApiError::bad_request(format!(
            "this model's maximum context length is {} tokens; the prompt has {} tokens and \
             {} more were asked for; shorten the messages or lower max_tokens",
            st.max_context,
            prompt.len(),
            max_tokens
        ))
        .param("messages")
        .code("context_length_exceeded"));
    }
    let kv = st.engine.kv_capacity();
    if needed > kv {
        return Err(kv_too_small(prompt.len(), max_tokens, kv));
    }
    if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= st.vocab_size) {
        return Err(ApiError::bad_request(format!(
            "the prompt uses token {bad}, outside this model's vocabulary of {}",
            st.vocab_size
        )));
    }
    Ok((prompt, max_tokens))
}

/// 400 for a request that can never fit the server's KV cache (whatever else runs).
fn kv_too_small(prompt: usize, max_tokens: usize, kv: usize) -> ApiError {
    ApiError::bad_request(format!(
        "the prompt has {prompt} tokens and {max_tokens} more were asked for, but this \
         server's KV cache holds {kv} positions in all (--kv-cache-tokens); shorten the \
         messages or lower max_tokens"
    ))
    .param("max_tokens")
    .code("context_length_exceeded")
}

/// A queued generation, read step by step.
pub struct Generation {
    rx: UnboundedReceiver<Event>,
    pub mapper: OutputMapper,
    pending_end: Option<(Finish, Usage)>,
    completion: usize,
    prompt_len: usize,
    finished: bool,
    /// Every generated id, in order (the `return_token_ids` extension).
    pub token_ids: Vec<u32>,
}

/// Queues `prompt`; refuses with 429 when the queue is full, 503 while shutting down, 400 when
/// it can never fit the KV cache.
/// With `must_call`, decoding is constrained to a call of one of those functions
/// ([`crate::tool_choice`]).
pub fn start(
    st: &Arc<AppState>,
    prompt: Vec<u32>,
    max_tokens: usize,
    sampling: SamplingParams,
    stop: &[String],
    must_call: Option<Vec<String>>,
) -> Result<Generation, ApiError> {
    if st.shutting_down.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(ApiError::unavailable("the server is shutting down"));
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let prompt_len = prompt.len();
    let req = GenRequest {
        prompt,
        sampling,
        max_tokens,
        stop_ids: STOP_TOKENS.to_vec(),
        constraint: must_call.map(|names| CallConstraint::new(st.tok, names)),
        events: tx,
    };
    match st.engine.submit(req) {
        Ok(()) => {}
        Err(SubmitError::QueueFull) => return Err(ApiError::queue_full()),
        Err(SubmitError::Closed) => return Err(ApiError::unavailable("the engine has stopped")),
        Err(SubmitError::TooLarge { capacity, .. }) => {
            return Err(kv_too_small(prompt_len, max_tokens, capacity))
        }
    }
    st.engine
        .stats
        .requests_total
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let st2 = st.clone();
    let mapper = OutputMapper::new(st.tok, stop, Box::new(move || st2.new_id("call_")));
    Ok(Generation {
        rx,
        mapper,
        pending_end: None,
        completion: 0,
        prompt_len,
        finished: false,
        token_ids: Vec::new(),
    })
}

impl Generation {
    fn ending(&mut self, end: Option<End>) -> (Finish, Usage) {
        let usage = Usage {
            prompt: self.prompt_len,
            completion: self.completion,
        };
        let finish = if !self.mapper.reply.calls.is_empty() {
            Finish::ToolCalls
        } else if matches!(end, Some(End::MaxTokens | End::Aborted)) {
            Finish::Length
        } else {
            Finish::Stop
        };
        (finish, usage)
    }

    /// The next step; None after the end.
    pub async fn next(&mut self) -> Option<Step> {
        if let Some((f, u)) = self.pending_end.take() {
            self.finished = true;
            return Some(Step::End(f, u));
        }
        if self.finished {
            return None;
        }
        loop {
            match self.rx.recv().await {
                Some(Event::Token(id)) => {
                    self.completion += 1;
                    self.token_ids.push(id);
                    let mut pieces = self.mapper.push(id);
                    if self.mapper.stopped() {
                        // A stop string: end here, and let the engine drop the request.
                        self.rx.close();
                        pieces.extend(self.mapper.finish());
                        self.pending_end = Some(self.ending(None));
                    }
                    // The first token always makes a step (streams send their first chunk
                    // then: time to first token is time to first chunk).
                    if self.completion == 1 || !pieces.is_empty() || self.pending_end.is_some() {
                        return Some(Step::Pieces(pieces));
                    }
                }
                Some(Event::Done { end, .. }) => {
                    let pieces = self.mapper.finish();
                    self.pending_end = Some(self.ending(Some(end)));
                    return Some(Step::Pieces(pieces));
                }
                Some(Event::Error(m)) => {
                    self.finished = true;
                    return Some(Step::Error(ApiError::internal(m)));
                }
                None => {
                    self.finished = true;
                    return Some(Step::Error(ApiError::internal(
                        "the engine ended the request without finishing it",
                    )));
                }
            }
        }
    }
}

/// The reply as an assistant message for the history (reasoning kept, tool calls with ids).
pub fn reply_message(reply: &Reply) -> ChatMessage {
    let mut m = ChatMessage::assistant(reply.content.clone());
    if reply.content.is_empty() {
        m.content = None;
    }
    if !reply.reasoning.is_empty() {
        m.reasoning_content = Some(reply.reasoning.clone());
    }
    for c in &reply.calls {
        m = m.with_tool_call(Some(&c.id), c.name.clone(), c.arguments.clone());
    }
    m
}
