//! The token loop shared by `generate` and `chat`: prefill the prompt, then sample one token
//! at a time until a stop token, the token limit, the caller, or Ctrl-C ends it.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use gptoss_core::config::EngineConfig;
use gptoss_core::{Error, Result};
use gptoss_models::sampler::Sampler;
use gptoss_models::tokenizer::Tokenizer;
use gptoss_models::{GptOssConfig, LogitsWanted, Model};

/// What the caller wants after seeing a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// Why the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// A stop token was sampled (it is the last generated token).
    StopToken(u32),
    MaxTokens,
    /// The caller said stop (e.g. a stop string).
    Caller,
    /// The interrupt flag was raised (Ctrl-C).
    Interrupted,
}

pub struct Generated {
    pub tokens: Vec<u32>,
    pub end: End,
}

/// The tokenizer of the model folder `dir` (its tokenizer.json, else built-in o200k_harmony).
pub fn load_tokenizer(dir: &Path) -> Result<Tokenizer> {
    Tokenizer::for_model(dir)
}

/// Refuses prompt ids the model cannot take (a model whose vocabulary is smaller than the
/// tokenizer's, like the tiny test models).
pub fn check_vocab(ids: &[u32], model: &GptOssConfig, tok: &Tokenizer) -> Result<()> {
    let v = model.vocab_size;
    if let Some(&bad) = ids.iter().find(|&&id| id as usize >= v) {
        return Err(Error::Input(format!(
            "this model's vocab_size is {v} but the prompt uses token {bad} (the tokenizer, {}, \
             has {} ids); a model this small, like the tiny test models, only takes --tokens",
            tok.source(),
            tok.vocab_size()
        )));
    }
    Ok(())
}

/// Runs `prompt` then samples up to `max_tokens` tokens. `on_token` sees each new token (the
/// stop token included) and may end the loop; `interrupt` is checked between tokens.
#[allow(clippy::too_many_arguments)]
pub fn run(
    model: &mut Model,
    cfg: &EngineConfig,
    prompt: &[u32],
    sampler: &mut Sampler,
    max_tokens: usize,
    stop_ids: &[u32],
    interrupt: Option<&AtomicBool>,
    on_token: &mut dyn FnMut(u32) -> Flow,
) -> Result<Generated> {
    let capacity = crate::common::context_for(cfg, &model.config, prompt.len() + max_tokens)?;
    let mut session = model.new_session(capacity)?;
    let interrupted = || interrupt.is_some_and(|f| f.load(Ordering::Relaxed));
    let mut tokens = Vec::with_capacity(max_tokens.min(4096));
    let mut step = || -> Result<End> {
        let mut logits = model.forward(&mut session, prompt, LogitsWanted::Last)?;
        loop {
            if interrupted() {
                return Ok(End::Interrupted);
            }
            let id = sampler.sample(&mut logits, &tokens);
            tokens.push(id);
            let flow = on_token(id);
            if stop_ids.contains(&id) {
                return Ok(End::StopToken(id));
            }
            if flow == Flow::Stop {
                return Ok(End::Caller);
            }
            if tokens.len() >= max_tokens {
                return Ok(End::MaxTokens);
            }
            if interrupted() {
                return Ok(End::Interrupted);
            }
            logits = model.forward(&mut session, &[id], LogitsWanted::Last)?;
        }
    };
    let result = step();
    let freed = model.free_session(session);
    let end = result?;
    freed?;
    Ok(Generated { tokens, end })
}
