//! One sequence being generated: its prompt, sampler, output and end conditions
//! ([`SeqState`]), fed to the model one forward pass at a time. Shared by the CLI's token loop
//! and the server's engine.
//!
//! Feeding is separate from the forward pass: [`SeqState::next_feed`] says which tokens run
//! next (a prompt chunk, or the last sampled token), [`SeqState::accept`] takes the logits
//! they produced, [`SeqState::sample`] draws the next token (through an optional
//! [`LogitsMask`], e.g. the server's tool-call constraint). Two ways to run the passes:
//!
//! - [`Sequence`]: the sequence owns a [`Session`] (a contiguous KV cache) and runs its own
//!   forward passes (the CLI: the whole prompt at once, then one token per pass);
//! - [`PagedSequence`] + [`step_paged`]: the sequence holds pages of a [`PagedKv`] shared with
//!   others, and one [`Model::forward_batch`] runs a step of many of them at once (the
//!   server's continuous batching: decodes and prefill chunks in the same step).

use gptoss_core::{Error, Result};

use crate::batch::{BatchItem, PagedKv, PagedSeq};
use crate::sampler::Sampler;
use crate::{LogitsWanted, Model, Session};

/// Why a sequence ended on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqEnd {
    /// A stop token was sampled (it is the last generated token).
    StopToken(u32),
    MaxTokens,
}

/// A hook on every draw: restricts which tokens may come next (e.g. a forced function call).
pub trait LogitsMask: Send {
    /// Called on the logits before each draw (set the logit of a banned token to -inf).
    fn mask(&mut self, logits: &mut [f32]);
    /// Called with each token drawn.
    fn accept(&mut self, id: u32);
}

/// A sequence's state apart from its KV cache: prompt (and how much of it ran), sampler,
/// generated tokens, the logits waiting to be sampled, and when to stop.
pub struct SeqState {
    sampler: Sampler,
    prompt: Vec<u32>,
    prefilled: usize,
    generated: Vec<u32>,
    logits: Option<Next>,
    max_tokens: usize,
    stop_ids: Vec<u32>,
    mask: Option<Box<dyn LogitsMask>>,
}

/// What a forward pass left for the next draw.
enum Next {
    Logits(Vec<f32>),
    /// The argmax, computed by the backend (a greedy sequence without penalties or mask:
    /// the same token the sampler would pick from the logits, without downloading them).
    Greedy(u32),
}

impl SeqState {
    pub fn new(prompt: Vec<u32>, sampler: Sampler, max_tokens: usize, stop_ids: Vec<u32>) -> Self {
        SeqState {
            sampler,
            prompt,
            prefilled: 0,
            generated: Vec::with_capacity(max_tokens.min(4096)),
            logits: None,
            max_tokens,
            stop_ids,
            mask: None,
        }
    }

    /// Every draw goes through `mask` first (and tells it the token drawn).
    pub fn with_mask(mut self, mask: Box<dyn LogitsMask>) -> Self {
        self.mask = Some(mask);
        self
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
    /// True while prompt tokens are left to run.
    pub fn is_prefilling(&self) -> bool {
        self.prefilled < self.prompt.len()
    }
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }
    /// KV positions the sequence can ever hold: its prompt and max_tokens.
    pub fn max_positions(&self) -> usize {
        self.prompt.len().saturating_add(self.max_tokens)
    }
    /// The sampler (its generator has advanced by the tokens drawn).
    pub fn sampler(&self) -> &Sampler {
        &self.sampler
    }
    /// True when the logits of the next token wait for [`sample`](Self::sample).
    pub fn is_ready(&self) -> bool {
        self.logits.is_some()
    }

    /// The tokens the next forward pass runs: up to `chunk` (at least 1) prompt tokens, or the
    /// last sampled token; empty while logits wait for [`sample`](Self::sample).
    pub fn next_feed(&self, chunk: usize) -> Result<&[u32]> {
        if self.logits.is_some() {
            return Ok(&[]);
        }
        if self.is_prefilling() {
            let end = self
                .prefilled
                .saturating_add(chunk.max(1))
                .min(self.prompt.len());
            return Ok(&self.prompt[self.prefilled..end]);
        }
        match self.generated.last() {
            Some(last) => Ok(std::slice::from_ref(last)),
            None => Err(Error::Input("an empty prompt".into())),
        }
    }

    /// Records a forward pass over the first `n` tokens of [`next_feed`](Self::next_feed);
    /// `logits` are those after its last token. Returns true when they are the logits of the
    /// next token (the prompt has run), ready for [`sample`](Self::sample).
    pub fn accept(&mut self, n: usize, logits: Vec<f32>) -> bool {
        self.record(n, Next::Logits(logits))
    }

    /// As [`accept`](Self::accept), with the backend's argmax in place of the logits; only
    /// for a sequence that [`draws_argmax`](Self::draws_argmax).
    pub fn accept_argmax(&mut self, n: usize, id: u32) -> bool {
        self.record(n, Next::Greedy(id))
    }

    fn record(&mut self, n: usize, next: Next) -> bool {
        if self.is_prefilling() {
            self.prefilled = (self.prefilled + n).min(self.prompt.len());
            if self.is_prefilling() {
                return false;
            }
        }
        self.logits = Some(next);
        true
    }

    /// True when the next token is the plain argmax of the logits (greedy, no penalty, no
    /// mask), so the backend may pick it.
    pub fn draws_argmax(&self) -> bool {
        let p = self.sampler.params();
        self.mask.is_none()
            && p.temperature == 0.0
            && p.frequency_penalty == 0.0
            && p.presence_penalty == 0.0
            && p.repetition_penalty == 1.0
    }

    /// Samples the next token from the accepted logits (None before them); says whether the
    /// sequence ended with it (a stop token, or max_tokens reached).
    pub fn sample(&mut self) -> Option<(u32, Option<SeqEnd>)> {
        let id = match self.logits.take()? {
            Next::Greedy(id) => id,
            Next::Logits(mut logits) => {
                if let Some(m) = self.mask.as_mut() {
                    m.mask(&mut logits);
                }
                let id = self.sampler.sample(&mut logits, &self.generated);
                if let Some(m) = self.mask.as_mut() {
                    m.accept(id);
                }
                id
            }
        };
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
}

/// A sequence with its own [`Session`] (contiguous KV cache), one forward pass at a time.
pub struct Sequence {
    session: Option<Session>,
    state: SeqState,
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
        Self::with_state(
            model,
            SeqState::new(prompt, sampler, max_tokens, stop_ids),
            capacity,
        )
    }

    /// `state` (e.g. with a [`LogitsMask`]) over a new session of `capacity` positions.
    pub fn with_state(model: &mut Model, state: SeqState, capacity: usize) -> Result<Sequence> {
        let session = model.new_session(capacity)?;
        Ok(Sequence {
            session: Some(session),
            state,
        })
    }

    pub fn state(&self) -> &SeqState {
        &self.state
    }
    pub fn prompt(&self) -> &[u32] {
        self.state.prompt()
    }
    pub fn generated(&self) -> &[u32] {
        self.state.generated()
    }
    /// Prompt tokens already run.
    pub fn prefilled(&self) -> usize {
        self.state.prefilled()
    }
    /// The sampler (its generator has advanced by the tokens drawn).
    pub fn sampler(&self) -> &Sampler {
        self.state.sampler()
    }

    /// Runs the next forward pass: up to `chunk` prompt tokens, or the last sampled token.
    /// Returns true when the logits of a next token are ready for [`sample`](Self::sample).
    pub fn feed(&mut self, model: &mut Model, chunk: usize) -> Result<bool> {
        if self.state.is_ready() {
            return Ok(true);
        }
        let Some(session) = self.session.as_mut() else {
            return Err(Error::Input("the sequence was freed".into()));
        };
        let tokens = self.state.next_feed(chunk)?;
        let n = tokens.len();
        let logits = model.forward(session, tokens, LogitsWanted::Last)?;
        Ok(self.state.accept(n, logits))
    }

    /// Samples the next token from the logits [`feed`](Self::feed) made (None before them);
    /// says whether the sequence ended with it (a stop token, or max_tokens reached).
    pub fn sample(&mut self) -> Option<(u32, Option<SeqEnd>)> {
        self.state.sample()
    }

    /// For a sequence that [`draws_argmax`](SeqState::draws_argmax), past its prompt and its
    /// first token: up to `n` (at most what max_tokens leaves) greedy tokens in one backend
    /// call ([`Model::decode_greedy`]), each drawn as [`sample`](Self::sample) would, up to
    /// and with the first that ends the sequence. The steps after that one ran but are not
    /// part of the sequence.
    pub fn decode_greedy(
        &mut self,
        model: &mut Model,
        n: usize,
    ) -> Result<Vec<(u32, Option<SeqEnd>)>> {
        let Some(session) = self.session.as_mut() else {
            return Err(Error::Input("the sequence was freed".into()));
        };
        let (Some(&last), false) = (self.state.generated().last(), self.state.is_ready()) else {
            return Err(Error::Input(
                "decode_greedy before the first token was drawn".into(),
            ));
        };
        if !self.state.draws_argmax() {
            return Err(Error::Input("decode_greedy on a sampled sequence".into()));
        }
        let left = self
            .state
            .max_tokens()
            .saturating_sub(self.state.generated().len());
        let mut drawn = Vec::new();
        for id in model.decode_greedy(session, last, n.min(left))? {
            self.state.accept_argmax(1, id);
            let Some((id, end)) = self.state.sample() else {
                break;
            };
            drawn.push((id, end));
            if end.is_some() {
                break;
            }
        }
        Ok(drawn)
    }

    /// Frees the KV cache.
    pub fn free(mut self, model: &mut Model) -> Result<()> {
        match self.session.take() {
            Some(s) => model.free_session(s),
            None => Ok(()),
        }
    }
}

/// A sequence on pages of a shared [`PagedKv`]; its forward passes run batched with other
/// sequences' through [`step_paged`].
pub struct PagedSequence {
    kv: PagedSeq,
    state: SeqState,
}

impl PagedSequence {
    /// Holds no page until its first step.
    pub fn new(state: SeqState) -> Self {
        PagedSequence {
            kv: PagedSeq::new(),
            state,
        }
    }
    pub fn state(&self) -> &SeqState {
        &self.state
    }
    /// Positions in the KV cache.
    pub fn positions(&self) -> usize {
        self.kv.len()
    }
    /// Samples the next token (see [`SeqState::sample`]).
    pub fn sample(&mut self) -> Option<(u32, Option<SeqEnd>)> {
        self.state.sample()
    }
    /// Gives the pages back to `kv` (the sequence ended, failed or was cancelled).
    pub fn release(&mut self, kv: &mut PagedKv) {
        kv.release(&mut self.kv);
    }
}

/// What one sequence did in a [`step_paged`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fed {
    /// Tokens it ran (prompt tokens while it was prefilling, else 1).
    pub tokens: usize,
    /// Prompt tokens among them.
    pub prompt_tokens: usize,
    /// Its next token's logits are ready for [`PagedSequence::sample`].
    pub ready: bool,
}

/// One forward pass over several sequences ([`Model::forward_batch`]): each runs its next
/// prompt chunk of at most its `chunk` tokens, or its last sampled token. A sequence whose
/// logits still wait to be sampled is refused. Returns what each one did, in order; on error
/// no sequence changes.
pub fn step_paged(
    model: &mut Model,
    kv: &mut PagedKv,
    batch: &mut [(&mut PagedSequence, usize)],
) -> Result<Vec<Fed>> {
    let argmax = batch.iter().all(|(s, _)| s.state.draws_argmax());
    let mut items = Vec::with_capacity(batch.len());
    for (n, (s, chunk)) in batch.iter_mut().enumerate() {
        let PagedSequence { kv: seq, state } = &mut **s;
        let tokens = state.next_feed(*chunk)?;
        if tokens.is_empty() {
            return Err(Error::Input(format!(
                "batch item {n}: its logits wait to be sampled"
            )));
        }
        items.push(BatchItem { seq, tokens });
    }
    // Every sequence greedy: the backend picks the tokens (one id each comes back instead of
    // a row of vocab_size logits, which at large batches costs more than the step itself).
    let out = if argmax {
        model
            .forward_batch_argmax(kv, &mut items)?
            .into_iter()
            .map(Next::Greedy)
            .collect::<Vec<_>>()
    } else {
        model
            .forward_batch(kv, &mut items)?
            .into_iter()
            .map(Next::Logits)
            .collect()
    };
    let fed: Vec<usize> = items.iter().map(|it| it.tokens.len()).collect();
    drop(items);
    Ok(batch
        .iter_mut()
        .zip(fed)
        .zip(out)
        .map(|(((s, _), n), next)| {
            let prompt_tokens = if s.state.is_prefilling() { n } else { 0 };
            Fed {
                tokens: n,
                prompt_tokens,
                ready: s.state.record(n, next),
            }
        })
        .collect())
}

/// [`PagedSequence::sample`] for each of `seqs`, spread over the machine's cores when there
/// are many (each draw scans the whole vocabulary). Same results as one by one: each
/// sequence has its own sampler.
pub fn sample_all(seqs: &mut [&mut PagedSequence]) -> Vec<Option<(u32, Option<SeqEnd>)>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if seqs.len() < 8 || threads < 2 {
        return seqs.iter_mut().map(|s| s.sample()).collect();
    }
    let per = seqs.len().div_ceil(threads);
    std::thread::scope(|sc| {
        let handles: Vec<_> = seqs
            .chunks_mut(per)
            .map(|part| sc.spawn(move || part.iter_mut().map(|s| s.sample()).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("sampling does not panic"))
            .collect()
    })
}
