//! One sequence being generated: its session (KV cache), sampler, prompt and output, advanced
//! one forward pass at a time. Shared by the CLI's token loop (whole prompt at once) and the
//! server's engine (prompt in chunks, interleaved with other sequences).

use gptoss_core::Result;

use crate::sampler::Sampler;
use crate::{LogitsWanted, Model, Session};

/// Why a sequence ended on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqEnd {
    /// A stop token was sampled (it is the last generated token).
    StopToken(u32),
    MaxTokens,
}

pub struct Sequence {
    session: Option<Session>,
    sampler: Sampler,
    prompt: Vec<u32>,
    prefilled: usize,
    generated: Vec<u32>,
    logits: Option<Vec<f32>>,
    max_tokens: usize,
    stop_ids: Vec<u32>,
}

impl Sequence {
    /// A sequence with a KV cache of `capacity` positions (prompt + max_tokens at most).
    pub fn new(
        model: &mut Model,
        prompt: Vec<u32>,
        sampler: Sampler,
        max_tokens: usize,
        stop_ids: Vec<u32>,
        capacity: usize,
    ) -> Result<Sequence> {
        let session = model.new_session(capacity)?;
        Ok(Sequence {
            session: Some(session),
            sampler,
            prompt,
            prefilled: 0,
            generated: Vec::with_capacity(max_tokens.min(4096)),
            logits: None,
            max_tokens,
            stop_ids,
        })
    }

    pub fn prompt(&self) -> &[u32] {
        &self.prompt
    }
    pub fn generated(&self) -> &[u32] {
        &self.generated
    }
    /// Prompt tokens already run.
    pub fn prefilled(&self) -> usize {
        self.prefilled
    }
    /// The sampler (its generator has advanced by the tokens drawn).
    pub fn sampler(&self) -> &Sampler {
        &self.sampler
    }

    /// Runs the next forward pass: up to `chunk` prompt tokens, or the last sampled token.
    /// Returns true when the logits of a next token are ready for [`sample`](Self::sample).
    pub fn feed(&mut self, model: &mut Model, chunk: usize) -> Result<bool> {
        if self.logits.is_some() {
            return Ok(true);
        }
        let Some(session) = self.session.as_mut() else {
            return Err(gptoss_core::Error::Input("the sequence was freed".into()));
        };
        if self.prefilled < self.prompt.len() {
            let end = (self.prefilled + chunk.max(1)).min(self.prompt.len());
            let logits = model.forward(
                session,
                &self.prompt[self.prefilled..end],
                LogitsWanted::Last,
            )?;
            self.prefilled = end;
            if end < self.prompt.len() {
                return Ok(false);
            }
            self.logits = Some(logits);
        } else {
            let Some(&last) = self.generated.last() else {
                return Err(gptoss_core::Error::Input("an empty prompt".into()));
            };
            self.logits = Some(model.forward(session, &[last], LogitsWanted::Last)?);
        }
        Ok(true)
    }

    /// Samples the next token from the logits [`feed`](Self::feed) made (None before them);
    /// says whether the sequence ended with it (a stop token, or max_tokens reached).
    pub fn sample(&mut self) -> Option<(u32, Option<SeqEnd>)> {
        let mut logits = self.logits.take()?;
        let id = self.sampler.sample(&mut logits, &self.generated);
        self.generated.push(id);
        let end = if self.stop_ids.contains(&id) {
            Some(SeqEnd::StopToken(id))
        } else if self.generated.len() >= self.max_tokens {
            Some(SeqEnd::MaxTokens)
        } else {
            None
        };
        Some((id, end))
    }

    /// Frees the KV cache.
    pub fn free(mut self, model: &mut Model) -> Result<()> {
        match self.session.take() {
            Some(s) => model.free_session(s),
            None => Ok(()),
        }
    }
}
