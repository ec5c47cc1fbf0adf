//! The engine thread: owns the [`Model`] (backends are not `Sync`), takes requests from a
//! bounded queue and interleaves up to `max_batch` of them step by step.
//!
//! Each round runs, for every active request, either one prefill chunk of its prompt (at most
//! `prefill_chunk` tokens, so a long prompt never stalls running streams for long) or one
//! decode step. New requests join between rounds. Each request is a
//! [`Sequence`] (gptoss_models::generation, shared with the CLI's token loop) with its own
//! session and KV cache, freed when it ends, fails, or its client goes away (the event receiver
//! was dropped).
//!
//! A request whose `tool_choice` forces a function call carries a [`CallConstraint`]; its
//! sequence samples through it (the constraint is the sequence's
//! [`LogitsMask`](gptoss_models::generation::LogitsMask)).
//!
//! Not yet: true multi-sequence batched graphs (one forward over all active sequences) and a
//! paged KV cache shared by all requests. Interleaving keeps streams fair and the API final;
//! batching the graph is the next step for throughput.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::Instant;

use gptoss_models::generation::{SeqEnd, SeqState, Sequence};
use gptoss_models::sampler::{Sampler, SamplingParams};
use gptoss_models::Model;
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
    /// Most requests decoding at once.
    pub max_batch: usize,
    /// Most requests waiting in the queue (more are refused with 429).
    pub queue: usize,
    /// Prompt tokens run per prefill step.
    pub prefill_chunk: usize,
}

/// Why a request was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitError {
    QueueFull,
    Closed,
}

/// The handle the HTTP side holds.
#[derive(Clone)]
pub struct EngineHandle {
    tx: SyncSender<GenRequest>,
    pub stats: Arc<Stats>,
    /// Set on shutdown after the drain timeout: active requests end with [`End::Aborted`].
    pub abort: Arc<AtomicBool>,
}

impl EngineHandle {
    pub fn submit(&self, req: GenRequest) -> Result<(), SubmitError> {
        self.stats.queue_depth.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(req) {
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

/// Starts the engine thread; it runs until every handle is dropped and the work is done.
pub fn start(model: Model, opts: EngineOptions, kv_budget: usize) -> EngineHandle {
    let (tx, rx) = mpsc::sync_channel(opts.queue.max(1));
    let stats = Arc::new(Stats::new(kv_budget));
    let abort = Arc::new(AtomicBool::new(false));
    let handle = EngineHandle {
        tx,
        stats: stats.clone(),
        abort: abort.clone(),
    };
    std::thread::Builder::new()
        .name("gptoss-engine".into())
        .spawn(move || run(model, rx, opts, stats, abort))
        .expect("spawn the engine thread");
    handle
}

struct Active {
    req: GenRequest,
    seq: Sequence,
    /// KV positions reserved.
    capacity: usize,
    started: Instant,
}

/// What one step did to a request.
enum Step {
    Continue,
    Finished,
}

impl Active {
    fn finish(&self, end: End) {
        let _ = self.req.events.send(Event::Done {
            end,
            prompt_tokens: self.seq.prompt().len(),
            completion_tokens: self.seq.generated().len(),
        });
    }

    fn step(&mut self, model: &mut Model, chunk: usize, stats: &Stats) -> Step {
        if self.req.events.is_closed() {
            return Step::Finished; // the client went away
        }
        let before = self.seq.generated().is_empty();
        let p0 = self.seq.prefilled();
        let ready = self.seq.feed(model, chunk);
        stats.add_prompt_tokens(self.seq.prefilled() - p0);
        match ready {
            Ok(false) => return Step::Continue,
            Ok(true) => {}
            Err(e) => return self.fail(e),
        }
        let Some((id, end)) = self.seq.sample() else {
            return Step::Continue;
        };
        if before {
            stats.record_ttft(self.started.elapsed());
        }
        stats.add_generated(1);
        let _ = self.req.events.send(Event::Token(id));
        match end {
            Some(SeqEnd::StopToken(_)) => {
                self.finish(End::StopToken);
                Step::Finished
            }
            Some(SeqEnd::MaxTokens) => {
                self.finish(End::MaxTokens);
                Step::Finished
            }
            None => Step::Continue,
        }
    }

    fn fail(&self, e: gptoss_core::Error) -> Step {
        tracing::error!("generation failed: {e}");
        let _ = self.req.events.send(Event::Error(e.to_string()));
        Step::Finished
    }
}

fn admit(model: &mut Model, mut req: GenRequest, stats: &Stats) -> Option<Active> {
    if req.events.is_closed() {
        return None;
    }
    let capacity = req.prompt.len() + req.max_tokens;
    let sampler = match Sampler::new(req.sampling.clone()) {
        Ok(s) => s,
        Err(e) => {
            let _ = req.events.send(Event::Error(e.to_string()));
            return None;
        }
    };
    let prompt = std::mem::take(&mut req.prompt);
    let mut state = SeqState::new(prompt, sampler, req.max_tokens, req.stop_ids.clone());
    if let Some(constraint) = req.constraint.take() {
        state = state.with_mask(Box::new(constraint));
    }
    let seq = Sequence::with_state(model, state, capacity);
    match seq {
        Ok(seq) => {
            stats.kv_add(capacity as i64);
            Some(Active {
                req,
                seq,
                capacity,
                started: Instant::now(),
            })
        }
        Err(e) => {
            let _ = req.events.send(Event::Error(e.to_string()));
            None
        }
    }
}

fn run(
    mut model: Model,
    rx: Receiver<GenRequest>,
    opts: EngineOptions,
    stats: Arc<Stats>,
    abort: Arc<AtomicBool>,
) {
    let mut active: Vec<Active> = Vec::new();
    loop {
        // New requests join between rounds; with nothing to do, wait for one.
        while active.len() < opts.max_batch.max(1) {
            let next = if active.is_empty() {
                match rx.recv() {
                    Ok(r) => r,
                    Err(_) => return, // every handle dropped: the server is gone
                }
            } else {
                match rx.try_recv() {
                    Ok(r) => r,
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            };
            stats.queue_depth.fetch_sub(1, Ordering::Relaxed);
            if let Some(a) = admit(&mut model, next, &stats) {
                active.push(a);
            }
        }
        stats.running.store(active.len(), Ordering::Relaxed);
        let aborting = abort.load(Ordering::Relaxed);
        let mut i = 0;
        while i < active.len() {
            let step = if aborting {
                active[i].finish(End::Aborted);
                Step::Finished
            } else {
                active[i].step(&mut model, opts.prefill_chunk, &stats)
            };
            match step {
                Step::Continue => i += 1,
                Step::Finished => {
                    let a = active.swap_remove(i);
                    stats.kv_add(-(a.capacity as i64));
                    if let Err(e) = a.seq.free(&mut model) {
                        tracing::error!("freeing a session failed: {e}");
                    }
                }
            }
        }
        stats.running.store(active.len(), Ordering::Relaxed);
        stats.tick();
    }
}
