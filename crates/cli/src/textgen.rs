//! The token loop shared by `generate` and `chat`: prefill the prompt, then sample one token
//! at a time until a stop token, the token limit, the caller, or Ctrl-C ends it.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use gptoss_core::config::EngineConfig;
use gptoss_core::{Error, Result};
use gptoss_models::generation::{SeqEnd, Sequence};
use gptoss_models::sampler::Sampler;
use gptoss_models::tokenizer::Tokenizer;
use gptoss_models::{decode_chunk_sizes, GptOssConfig, Model, DECODE_CHUNK_MAX};

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
    // The sequence logic (prefill, sampling, stop token, token limit) is shared with the
    // server's engine: gptoss_models::generation.
    let mut seq = Sequence::new(
        model,
        prompt.to_vec(),
        sampler.clone(),
        max_tokens,
        stop_ids.to_vec(),
        capacity,
    )?;
    let interrupted = || interrupt.is_some_and(|f| f.load(Ordering::Relaxed));
    let mut step = || -> Result<End> {
        // Greedy sequences decode in chunks on the backend after their first token (the GPU
        // then runs its steps back to back); others one token a pass.
        let greedy = seq.state().draws_argmax();
        let mut sizes = decode_chunk_sizes();
        loop {
            let drawn = if greedy && !seq.generated().is_empty() {
                seq.decode_greedy(model, sizes.next().unwrap_or(DECODE_CHUNK_MAX))?
            } else {
                // The whole prompt in one pass, then one token per pass.
                while !seq.feed(model, usize::MAX)? {}
                seq.sample().into_iter().collect()
            };
            if interrupted() {
                return Ok(End::Interrupted);
            }
            for (id, end) in drawn {
                let flow = on_token(id);
                match end {
                    Some(SeqEnd::StopToken(id)) => return Ok(End::StopToken(id)),
                    _ if flow == Flow::Stop => return Ok(End::Caller),
                    Some(SeqEnd::MaxTokens) => return Ok(End::MaxTokens),
                    None => {}
                }
                if interrupted() {
                    return Ok(End::Interrupted);
                }
            }
        }
    };
    let result = step();
    let tokens = seq.generated().to_vec();
    // The caller's sampler continues where this reply left it (a chat's next reply).
    *sampler = seq.sampler().clone();
    let freed = seq.free(model);
    let end = result?;
    freed?;
    Ok(Generated { tokens, end })
}
