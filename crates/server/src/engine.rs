//! The engine thread: owns the [`Model`] (backends are not `Sync`) and one paged KV cache
//! ([`PagedKv`], `--kv-cache-tokens` positions in pages of [`PAGE_SIZE`]) shared by every
//! request, takes requests from a bounded queue and runs them with continuous batching.
//!
//! Each round is ONE forward pass ([`step_paged`], i.e. `Model::forward_batch`) over up to
//! `max_batch` sequences: every sequence past its prompt feeds its last token, and sequences
//! still prefilling feed prompt chunks within a budget of `prefill_chunk` prompt tokens per
//! round (oldest first), so a long prompt never stalls the running streams. Then each
//! sequence whose prompt has run samples its next token from its own logits row. On the cpu
//! backend rows are computed independently, so a request's tokens are the same alone or
//! batched.
//!
//! New requests join between rounds, in arrival order. A request is admitted only when the
//! pages its prompt + max_tokens can ever need are free of other requests' reservations; until
//! then it waits at the head of the queue (later ones wait behind it). One that could never
//! fit is refused up front ([`SubmitError::TooLarge`]). A request's pages go back when it ends,
//! fails, or its client goes away (the event receiver was closed or dropped).
//!
//! Per-sequence state (prompt, sampler, stop conditions) is gptoss_models' generation module,
//! shared with the CLI; a request whose `tool_choice` forces a function call samples through
//! its [`CallConstraint`] as that module's [`LogitsMask`](gptoss_models::generation::LogitsMask).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::Instant;

use gptoss_core::Result;
use gptoss_models::batch::{PagedKv, PAGE_SIZE};
use gptoss_models::generation::{sample_all, step_paged, PagedSequence, SeqEnd, SeqState};
use gptoss_models::sampler::{Sampler, SamplingParams};
use gptoss_models::{GptOssConfig, Model};
use tokio::sync::mpsc::UnboundedSender;

use crate::metrics::Stats;
use crate::tool_choice::CallConstraint;

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// A stop token was sampled (it was sent as the last token).
    StopToken,
    MaxTokens,
    /// The server is shutting down and the drain timeout passed.
    Aborted,
}

/// What the engine sends back for one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Token(u32),
    Done {
        end: End,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    Error(String),
}

/// One generation request.
pub struct GenRequest {
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    pub max_tokens: usize,
    pub stop_ids: Vec<u32>,
    /// Decoding constrained to a function call (tool_choice "required" or named).
    pub constraint: Option<CallConstraint>,
    pub events: UnboundedSender<Event>,
}

#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Most requests in one batch (the others wait in the queue).
    pub max_batch: usize,
    /// Most requests waiting in the queue (more are refused with 429).
    pub queue: usize,
    /// Prompt tokens prefilled per round, shared by every prompt being prefilled (the
    /// decoding sequences' tokens ride along in the same forward pass).
    pub prefill_chunk: usize,
    /// KV-cache positions shared by all requests (rounded up to whole pages), allocated at
    /// start; 0: [`default_kv_cache_tokens`] with the model's whole context.
    pub kv_cache_tokens: usize,
}

/// The most KV-cache positions the default allocates (unless one request's context needs
/// more).
pub const DEFAULT_KV_CACHE_TOKENS_CAP: usize = 65_536;
/// The most memory the default KV cache takes (unless one request's context needs more).
pub const DEFAULT_KV_CACHE_BYTES_CAP: usize = 4 << 30;

/// Bytes of KV cache per position of `cfg` (keys and values of every layer, f32 pools).
pub fn kv_bytes_per_position(cfg: &GptOssConfig) -> usize {
    gptoss_models::kv_cache::KvCache::bytes(cfg, 1, gptoss_core::DType::F32) as usize
}

/// The default KV cache: `max_batch` full contexts, capped at
/// [`DEFAULT_KV_CACHE_TOKENS_CAP`] positions and [`DEFAULT_KV_CACHE_BYTES_CAP`] bytes, but
/// never below one `max_context`.
pub fn default_kv_cache_tokens(max_batch: usize, max_context: usize, cfg: &GptOssConfig) -> usize {
    max_batch
        .max(1)
        .saturating_mul(max_context)
        .min(DEFAULT_KV_CACHE_TOKENS_CAP)
        .min(DEFAULT_KV_CACHE_BYTES_CAP / kv_bytes_per_position(cfg).max(1))
        .max(max_context)
}

/// Why a request was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitError {
    QueueFull,
    Closed,
    /// Its prompt + max_tokens (`needed` positions) can never fit the KV cache (`capacity`
    /// positions in all).
    TooLarge {
        needed: usize,
        capacity: usize,
    },
}

impl std::fmt::Display for SubmitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubmitError::QueueFull => f.write_str("the request queue is full"),
            SubmitError::Closed => f.write_str("the engine has stopped"),
            SubmitError::TooLarge { needed, capacity } => write!(
                f,
                "the request needs {needed} KV-cache positions (prompt + max_tokens) but the \
                 server's KV cache holds {capacity} positions in all (--kv-cache-tokens); \
                 shorten the prompt or lower max_tokens"
            ),
        }
    }
}

/// The handle the HTTP side holds.
#[derive(Clone)]
pub struct EngineHandle {
    tx: SyncSender<(Instant, GenRequest)>,
    pub stats: Arc<Stats>,
    /// Set on shutdown after the drain timeout: active requests end with [`End::Aborted`].
    pub abort: Arc<AtomicBool>,
    queue: usize,
    kv_pages: usize,
}

impl EngineHandle {
    /// KV-cache positions in all: the most prompt + max_tokens a request may ask for.
    pub fn kv_capacity(&self) -> usize {
        self.kv_pages * PAGE_SIZE
    }

    pub fn submit(&self, req: GenRequest) -> std::result::Result<(), SubmitError> {
        let needed = req.prompt.len().saturating_add(req.max_tokens);
        if PagedKv::pages_for(needed) > self.kv_pages {
            return Err(SubmitError::TooLarge {
                needed,
                capacity: self.kv_capacity(),
            });
        }
        // The depth counts requests in the channel and the one the engine holds back for
        // pages: both are waiting.
        if self.stats.queue_depth.fetch_add(1, Ordering::Relaxed) >= self.queue {
            self.stats.queue_depth.fetch_sub(1, Ordering::Relaxed);
            return Err(SubmitError::QueueFull);
        }
        match self.tx.try_send((Instant::now(), req)) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.stats.queue_depth.fetch_sub(1, Ordering::Relaxed);
                Err(match e {
                    TrySendError::Full(_) => SubmitError::QueueFull,
                    TrySendError::Disconnected(_) => SubmitError::Closed,
                })
            }
        }
    }
}

/// Allocates the KV cache and starts the engine thread; it runs until every handle is dropped
/// and the work is done.
pub fn start(mut model: Model, opts: EngineOptions) -> Result<EngineHandle> {
    let tokens = match opts.kv_cache_tokens {
        0 => default_kv_cache_tokens(
            opts.max_batch,
            model.config.max_position_embeddings,
            &model.config,
        ),
        n => n,
    };
    let kv = model.new_paged_kv(tokens)?;
    let queue = opts.queue.max(1);
    let (tx, rx) = mpsc::sync_channel(queue);
    let stats = Arc::new(Stats::new(kv.total_pages()));
    let abort = Arc::new(AtomicBool::new(false));
    let handle = EngineHandle {
        tx,
        stats: stats.clone(),
        abort: abort.clone(),
        queue,
        kv_pages: kv.total_pages(),
    };
    let engine = Engine {
        model,
        kv,
        opts,
        stats,
        abort,
        running: Vec::new(),
        held: None,
        reserved: 0,
    };
    std::thread::Builder::new()
        .name("gptoss-engine".into())
        .spawn(move || engine.run(rx))
        .map_err(|e| gptoss_core::Error::Input(format!("cannot start the engine thread: {e}")))?;
    Ok(handle)
}

/// A request being prefilled or decoded.
struct Running {
    events: UnboundedSender<Event>,
    seq: PagedSequence,
    /// Pages reserved for it (its prompt + max_tokens).
    pages: usize,
    /// When it was submitted.
    submitted: Instant,
}

impl Running {
    fn finish(&self, end: End) {
        let _ = self.events.send(Event::Done {
            end,
            prompt_tokens: self.seq.state().prompt().len(),
            completion_tokens: self.seq.state().generated().len(),
        });
    }
}

struct Engine {
    model: Model,
    kv: PagedKv,
    opts: EngineOptions,
    stats: Arc<Stats>,
    abort: Arc<AtomicBool>,
    /// In admission order (prefill goes oldest first).
    running: Vec<Running>,
    /// The head of the queue, waiting for pages.
    held: Option<(Instant, GenRequest)>,
    /// Pages reserved by the running requests.
    reserved: usize,
}

impl Engine {
    fn run(mut self, rx: Receiver<(Instant, GenRequest)>) {
        while self.admit(&rx) {
            if self.abort.load(Ordering::Relaxed) {
                for r in &self.running {
                    r.finish(End::Aborted);
                }
                self.end_where(|_, _| true);
            }
            // Clients that went away.
            self.end_where(|_, r| r.events.is_closed());
            if !self.running.is_empty() {
                self.step();
            }
            self.publish();
            self.stats.tick();
        }
        if let Err(e) = self.model.free_paged_kv(self.kv) {
            tracing::error!("freeing the KV cache failed: {e}");
        }
    }

    /// Takes queued requests while the batch has room and the KV cache has their pages; with
    /// nothing running, waits for one. False when every handle is gone and nothing is left.
    fn admit(&mut self, rx: &Receiver<(Instant, GenRequest)>) -> bool {
        while self.running.len() < self.opts.max_batch.max(1) {
            let (submitted, req) = match self.held.take() {
                Some(r) => r,
                None if self.running.is_empty() => match rx.recv() {
                    Ok(r) => r,
                    Err(_) => return false, // every handle dropped: the server is gone
                },
                None => match rx.try_recv() {
                    Ok(r) => r,
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                },
            };
            if req.events.is_closed() {
                self.stats.queue_depth.fetch_sub(1, Ordering::Relaxed);
                continue;
            }
            let pages = PagedKv::pages_for(req.prompt.len().saturating_add(req.max_tokens));
            if pages <= self.kv.total_pages() && self.reserved + pages > self.kv.total_pages() {
                self.held = Some((submitted, req)); // waits for pages
                break;
            }
            self.stats.queue_depth.fetch_sub(1, Ordering::Relaxed);
            if let Err(m) = self.check(&req, pages) {
                let _ = req.events.send(Event::Error(m));
                continue;
            }
            let sampler = match Sampler::new(req.sampling) {
                Ok(s) => s,
                Err(e) => {
                    let _ = req.events.send(Event::Error(e.to_string()));
                    continue;
                }
            };
            let mut state = SeqState::new(req.prompt, sampler, req.max_tokens, req.stop_ids);
            if let Some(c) = req.constraint {
                state = state.with_mask(Box::new(c));
            }
            self.reserved += pages;
            self.running.push(Running {
                events: req.events,
                seq: PagedSequence::new(state),
                pages,
                submitted,
            });
        }
        self.publish();
        true
    }

    /// Why a request cannot run, if it cannot (every check one step could fail on, so that
    /// one bad request never fails a batch).
    fn check(&self, req: &GenRequest, pages: usize) -> std::result::Result<(), String> {
        let cfg = &self.model.config;
        let needed = req.prompt.len().saturating_add(req.max_tokens);
        if pages > self.kv.total_pages() {
            return Err(SubmitError::TooLarge {
                needed,
                capacity: self.kv.total_pages() * PAGE_SIZE,
            }
            .to_string());
        }
        if req.prompt.is_empty() {
            return Err("an empty prompt".into());
        }
        if req.max_tokens == 0 {
            return Err("max_tokens must be at least 1".into());
        }
        if needed > cfg.max_position_embeddings {
            return Err(format!(
                "{needed} positions (prompt + max_tokens) exceed the model's context of {}",
                cfg.max_position_embeddings
            ));
        }
        if let Some(bad) = req.prompt.iter().find(|&&t| t as usize >= cfg.vocab_size) {
            return Err(format!(
                "the prompt uses token {bad}, outside this model's vocabulary of {}",
                cfg.vocab_size
            ));
        }
        Ok(())
    }

    /// One round: one forward pass over every running sequence, then a token for each one
    /// whose prompt has run.
    fn step(&mut self) {
        // Decodes: one token each. Prefill: prompt chunks within the round's budget.
        let mut chunks: Vec<usize> = self
            .running
            .iter()
            .map(|r| usize::from(!r.seq.state().is_prefilling()))
            .collect();
        let mut budget = self.opts.prefill_chunk.max(1);
        for (r, c) in self.running.iter().zip(chunks.iter_mut()) {
            let s = r.seq.state();
            if budget == 0 {
                break;
            }
            if s.is_prefilling() {
                *c = (s.prompt().len() - s.prefilled()).min(budget);
                budget -= *c;
            }
        }
        let in_step: Vec<usize> = (0..chunks.len()).filter(|&i| chunks[i] > 0).collect();
        let mut batch: Vec<_> = self
            .running
            .iter_mut()
            .zip(&chunks)
            .filter(|(_, &c)| c > 0)
            .map(|(r, &c)| (&mut r.seq, c))
            .collect();
        let result = step_paged(&mut self.model, &mut self.kv, &mut batch);
        drop(batch);
        self.publish(); // the pages in use before any token goes out
        let mut ended = vec![false; self.running.len()];
        match result {
            Err(e) => {
                tracing::error!("a batched step failed: {e}");
                for &i in &in_step {
                    let _ = self.running[i].events.send(Event::Error(e.to_string()));
                    ended[i] = true;
                }
            }
            Ok(fed) => {
                let tokens: usize = fed.iter().map(|f| f.tokens).sum();
                self.stats.record_step(in_step.len(), tokens);
                let mut ready = Vec::new();
                for (&i, f) in in_step.iter().zip(&fed) {
                    self.stats.add_prompt_tokens(f.prompt_tokens);
                    if f.ready {
                        ready.push(i);
                    }
                }
                // Draw every ready sequence's token (in parallel when many), then send them.
                let mut seqs: Vec<&mut PagedSequence> = self
                    .running
                    .iter_mut()
                    .enumerate()
                    .filter(|(i, _)| ready.binary_search(i).is_ok())
                    .map(|(_, r)| &mut r.seq)
                    .collect();
                let drawn = sample_all(&mut seqs);
                drop(seqs);
                for (i, d) in ready.into_iter().zip(drawn) {
                    ended[i] = self.emit(i, d);
                }
            }
        }
        self.end_where(|i, _| ended[i]);
    }

    /// Sends sequence `i`'s drawn token; true when the request ended.
    fn emit(&mut self, i: usize, drawn: Option<(u32, Option<SeqEnd>)>) -> bool {
        let r = &mut self.running[i];
        let Some((id, end)) = drawn else {
            return false;
        };
        let first = r.seq.state().generated().len() == 1;
        if first {
            self.stats.record_ttft(r.submitted.elapsed());
        }
        self.stats.add_generated(1);
        let _ = r.events.send(Event::Token(id));
        match end {
            Some(SeqEnd::StopToken(_)) => r.finish(End::StopToken),
            Some(SeqEnd::MaxTokens) => r.finish(End::MaxTokens),
            None => return false,
        }
        true
    }

    /// Drops the running requests `f` picks (by index and request), giving back their pages.
    fn end_where(&mut self, f: impl Fn(usize, &Running) -> bool) {
        let mut kept = Vec::with_capacity(self.running.len());
        for (i, mut r) in std::mem::take(&mut self.running).into_iter().enumerate() {
            if f(i, &r) {
                r.seq.release(&mut self.kv);
                self.reserved -= r.pages;
            } else {
                kept.push(r);
            }
        }
        self.running = kept;
        self.publish();
    }

    fn publish(&self) {
        self.stats
            .running
            .store(self.running.len(), Ordering::Relaxed);
        self.stats
            .set_kv(self.kv.total_pages() - self.kv.free_pages(), self.reserved);
    }
}
