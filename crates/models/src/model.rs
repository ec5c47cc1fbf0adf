//! A gpt-oss model loaded on a backend, and sessions that run it token by token.

use std::path::Path;

use gptoss_core::{Backend, BufferId, DType, DecodeChain, Error, Graph, Result, TensorDesc};

use crate::checkpoint::Checkpoint;
use crate::config::GptOssConfig;
use crate::graph_builder::{build_step, build_step_into, KvBinding, LogitsWanted, StepIo};
use crate::kv_cache::KvCache;
use crate::sharding::{ShardPlan, Sharding};
use crate::weights::ModelWeights;

/// Puts one shard's weights on its backend: `(config, plan, backend, progress)`.
pub type ShardLoader<'a> = dyn FnMut(
        &GptOssConfig,
        &ShardPlan,
        &mut dyn Backend,
        &mut dyn FnMut(u64, u64),
    ) -> Result<ModelWeights>
    + 'a;

pub struct Model {
    pub config: GptOssConfig,
    /// One per backend; a model that is not split has one.
    pub(crate) shards: Vec<Shard>,
    /// The backends hold the experts as bf16 (the CUDA backends' --dequantize), so a decode
    /// step reads 4 bytes where MXFP4 holds one: only the benchmark's figures use it.
    pub dequantized_experts: bool,
}

/// One backend's part of the model.
pub(crate) struct Shard {
    pub(crate) plan: ShardPlan,
    pub(crate) weights: ModelWeights,
    pub(crate) backend: Box<dyn Backend>,
    /// What one-token steps reuse from the previous one.
    decode: DecodeCache,
    /// The last batched step's graph, built over by the next one ([`build_step_into`]).
    pub(crate) batch_graph: Graph,
}

/// One sequence's state: its KV cache (one per shard) and how many positions it holds.
#[derive(Debug)]
pub struct Session {
    caches: Vec<KvCache>,
    len: usize,
}

impl Session {
    /// Positions already in the context.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn capacity(&self) -> usize {
        self.caches[0].capacity
    }
}

impl Model {
    /// Load a model folder onto `backend`. `progress(done_bytes, total_bytes)` follows the upload.
    pub fn load(
        dir: &Path,
        backend: Box<dyn Backend>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Model> {
        Self::load_sharded(dir, vec![backend], Sharding::NONE, progress)
    }

    /// Load a model folder split over `backends` (one shard each, in rank order) as
    /// `sharding` says. Each backend receives only its part; `progress` follows the total.
    pub fn load_sharded(
        dir: &Path,
        backends: Vec<Box<dyn Backend>>,
        sharding: Sharding,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Model> {
        let config = GptOssConfig::load(dir)?;
        let ckpt = Checkpoint::open(dir)?;
        Self::build(
            config,
            backends,
            sharding,
            progress,
            &mut |cfg, plan, be, prog| ModelWeights::load(cfg, plan, &ckpt, be, prog),
        )
    }

    /// Put weights on each of `backends` through `load(config, plan, backend, progress)`.
    pub fn build(
        config: GptOssConfig,
        backends: Vec<Box<dyn Backend>>,
        sharding: Sharding,
        progress: &mut dyn FnMut(u64, u64),
        load: &mut ShardLoader,
    ) -> Result<Model> {
        if backends.len() != sharding.world.max(1) {
            return Err(Error::Input(format!(
                "{} backends given for {} shards",
                backends.len(),
                sharding.world
            )));
        }
        let plans = sharding.plans(&config)?;
        let mut shards = Vec::with_capacity(plans.len());
        let n = plans.len() as u64;
        for (plan, mut backend) in plans.into_iter().zip(backends) {
            let r = plan.rank as u64;
            // Progress over all shards: shard r covers the r-th of n equal parts.
            let weights = load(&config, &plan, backend.as_mut(), &mut |d, t| {
                progress(r * t + d, n * t)
            })?;
            shards.push(Shard {
                plan,
                weights,
                backend,
                decode: DecodeCache::default(),
                batch_graph: Graph::new(),
            });
        }
        Ok(Model {
            config,
            shards,
            dequantized_experts: false,
        })
    }

    /// A model from weights already on `backend` (e.g. a synthetic model).
    pub fn from_parts(
        config: GptOssConfig,
        weights: ModelWeights,
        backend: Box<dyn Backend>,
    ) -> Model {
        Model {
            shards: vec![Shard {
                plan: ShardPlan::whole(&config),
                weights,
                backend,
                decode: DecodeCache::default(),
                batch_graph: Graph::new(),
            }],
            config,
            dequantized_experts: false,
        }
    }

    /// Rank 0's backend, for work outside the model graph (bandwidth probes in `gptoss bench`).
    pub fn backend_mut(&mut self) -> &mut dyn Backend {
        self.shards[0].backend.as_mut()
    }

    pub fn backend_name(&self) -> &str {
        self.shards[0].backend.name()
    }

    /// Backends the model is split over (1 = not split).
    pub fn world(&self) -> usize {
        self.shards.len()
    }

    /// The float dtype the weights were published in.
    pub fn float_dtype(&self) -> DType {
        self.shards[0].weights.float_dtype
    }

    /// A new empty sequence with room for `capacity` positions (0 = max_position_embeddings).
    pub fn new_session(&mut self, capacity: usize) -> Result<Session> {
        let capacity = if capacity == 0 {
            self.config.max_position_embeddings
        } else {
            capacity
        };
        let caches = self.alloc_caches(capacity)?;
        Ok(Session { caches, len: 0 })
    }

    pub fn free_session(&mut self, s: Session) -> Result<()> {
        self.free_caches(s.caches)
    }

    /// One f32 KV cache of `rows` rows per shard (its KV heads); all or nothing.
    pub(crate) fn alloc_caches(&mut self, rows: usize) -> Result<Vec<KvCache>> {
        let mut caches = Vec::with_capacity(self.shards.len());
        for sh in &mut self.shards {
            let kv = sh.plan.kv_heads.len();
            match KvCache::alloc(sh.backend.as_mut(), &self.config, kv, rows, DType::F32) {
                Ok(c) => caches.push(c),
                Err(e) => {
                    let _ = self.free_caches(caches);
                    return Err(e);
                }
            }
        }
        Ok(caches)
    }

    /// Frees per-shard caches from [`alloc_caches`](Self::alloc_caches); the first error wins.
    pub(crate) fn free_caches(&mut self, caches: Vec<KvCache>) -> Result<()> {
        let mut first_err = Ok(());
        for (c, sh) in caches.into_iter().zip(&mut self.shards) {
            let r = c.free(sh.backend.as_mut());
            if first_err.is_ok() {
                first_err = r;
            }
        }
        first_err
    }

    /// Run `tokens` after what `session` holds and return the greedy next token: the argmax
    /// of the last position's logits (first on ties), computed on the backend
    /// (`LogitsWanted::Argmax`), so only 4 bytes come back.
    /// A backend without `Op::Argmax` (Unsupported) gets the logits downloaded and the argmax
    /// taken here instead.
    pub fn forward_argmax(&mut self, session: &mut Session, tokens: &[u32]) -> Result<u32> {
        match self.forward(session, tokens, LogitsWanted::Argmax) {
            Ok(out) => Ok(out[0].to_bits()),
            Err(Error::Unsupported { .. }) => {
                let logits = self.forward(session, tokens, LogitsWanted::Last)?;
                Ok(argmax(&logits) as u32)
            }
            Err(e) => Err(e),
        }
    }

    /// Run `tokens` after what `session` holds; returns logits row-major, `[tokens.len(), V]`
    /// for `All` or `[1, V]` for `Last`; for `Argmax`, one element whose bits are the token id
    /// (use `forward_argmax`). On error the session is unchanged.
    pub fn forward(
        &mut self,
        session: &mut Session,
        tokens: &[u32],
        wanted: LogitsWanted,
    ) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Err(Error::Input("no tokens to run".into()));
        }
        let end = self.check_room(session, tokens, tokens.len(), "shorten the prompt")?;
        let step = Step {
            config: &self.config,
            tokens,
            start: session.len,
            wanted,
        };
        let caches = &session.caches;
        let out = on_every_shard(&mut self.shards, |rank, sh| step.run(sh, &caches[rank]))?;
        session.len = end;
        Ok(out)
    }

    /// Greedy continuation of `prompt` by `max_tokens` tokens, stopping early at any of `stop`.
    /// `on_token` sees each new token as it is produced.
    pub fn generate_greedy(
        &mut self,
        prompt: &[u32],
        max_tokens: usize,
        stop: &[u32],
        capacity: usize,
        on_token: &mut dyn FnMut(u32),
    ) -> Result<Vec<u32>> {
        let capacity = if capacity == 0 {
            prompt.len() + max_tokens
        } else {
            capacity
        };
        if prompt.len() + max_tokens > capacity {
            return Err(Error::Input(format!(
                "prompt of {} tokens plus {max_tokens} new tokens exceeds the context of {capacity}; lower --max-tokens or raise --max-context",
                prompt.len()
            )));
        }
        let mut session = self.new_session(capacity)?;
        let result = (|| {
            if max_tokens == 0 {
                return Ok(Vec::new());
            }
            let first = self.forward_argmax(&mut session, prompt)?;
            on_token(first);
            let mut out = vec![first];
            if !stop.contains(&first) {
                let rest = max_tokens - 1;
                out.extend(self.greedy_continue(&mut session, first, rest, stop, on_token)?);
            }
            Ok(out)
        })();
        self.free_session(session)?;
        result
    }

    /// The position after `new` more steps of `session` that run `tokens` (ids checked against
    /// the vocabulary), or the error naming the limit and, for the context, `fix` or a longer
    /// context.
    fn check_room(
        &self,
        session: &Session,
        tokens: &[u32],
        new: usize,
        fix: &str,
    ) -> Result<usize> {
        let v = self.config.vocab_size;
        if let Some((i, t)) = tokens.iter().enumerate().find(|(_, t)| **t as usize >= v) {
            return Err(Error::Input(format!(
                "token id {t} (at index {i}) is out of range: this model's vocab_size is {v}"
            )));
        }
        let end = session.len + new;
        if end > session.capacity() {
            return Err(Error::Input(format!(
                "{new} new tokens after {} in context need {end} positions, but the context \
                 holds {}; {fix} or raise --max-context",
                session.len,
                session.capacity()
            )));
        }
        Ok(end)
    }

    /// Greedy continuation of `session` after token `last` (not yet in it) by up to `n`
    /// tokens, stopping after any of `stop`; `on_token` sees each one. The steps go to the
    /// backend in chunks (`decode_greedy`; DECODE_CHUNK, doubling to DECODE_CHUNK_MAX), so
    /// the tokens arrive in small bursts and the GPU does not wait for the host between steps;
    /// a chunk's steps after a stop token are computed and dropped (the session then holds
    /// them, past what was returned).
    pub fn greedy_continue(
        &mut self,
        session: &mut Session,
        last: u32,
        n: usize,
        stop: &[u32],
        on_token: &mut dyn FnMut(u32),
    ) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(n);
        let mut last = last;
        let mut sizes = decode_chunk_sizes();
        while out.len() < n {
            let size = sizes.next().unwrap_or(DECODE_CHUNK_MAX);
            let chunk = self.decode_greedy(session, last, size.min(n - out.len()))?;
            for tok in chunk {
                out.push(tok);
                on_token(tok);
                if stop.contains(&tok) {
                    return Ok(out);
                }
                last = tok;
            }
        }
        Ok(out)
    }

    /// `steps` greedy one-token steps after `session`, the first on token `first`: the chosen
    /// tokens. One backend call (`Backend::decode_chain`) on a model in one piece; step by step
    /// on a split one. On error the session is unchanged.
    pub fn decode_greedy(
        &mut self,
        session: &mut Session,
        first: u32,
        steps: usize,
    ) -> Result<Vec<u32>> {
        let v = self.config.vocab_size;
        let end = self.check_room(session, &[first], steps, "lower --max-tokens")?;
        if steps == 0 {
            return Ok(Vec::new());
        }
        let step_by_step = |model: &mut Model, session: &mut Session| {
            let mut tokens = Vec::with_capacity(steps);
            let mut tok = first;
            for _ in 0..steps {
                tok = model.forward_argmax(session, &[tok])?;
                tokens.push(tok);
            }
            Ok(tokens)
        };
        if self.shards.len() != 1 {
            return step_by_step(self, session);
        }
        let sh = &mut self.shards[0];
        let be = sh.backend.as_mut();
        let io = sh.decode.io(be, LogitsWanted::Argmax, v)?;
        let cache = &session.caches[0];
        let graph = sh.decode.graph(
            &self.config,
            &sh.plan,
            &sh.weights,
            cache,
            io,
            LogitsWanted::Argmax,
        );
        let chain = DecodeChain {
            ids: io.ids,
            positions: io.positions,
            argmax: io.logits,
            first,
            start: session.len as u32,
        };
        match be.decode_chain(graph, chain, steps) {
            Ok(tokens) => {
                session.len = end;
                Ok(tokens)
            }
            // A backend without the Argmax op: forward_argmax takes the logits instead.
            Err(Error::Unsupported { .. }) => step_by_step(self, session),
            Err(e) => Err(e),
        }
    }
}

/// Run `f` for every shard, each on its own thread when the model is split (the
/// all-reduces inside the graphs meet across them); rank 0's result is the model's.
pub(crate) fn on_every_shard<T: Send>(
    shards: &mut [Shard],
    f: impl Fn(usize, &mut Shard) -> Result<T> + Sync,
) -> Result<T> {
    if shards.len() == 1 {
        return f(0, &mut shards[0]);
    }
    let results: Vec<Result<T>> = std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = shards
            .iter_mut()
            .enumerate()
            .map(|(rank, sh)| s.spawn(move || f(rank, sh)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Input("a shard's thread panicked".into())))
            })
            .collect()
    });
    // The first error of any shard, else rank 0's result.
    let mut out = None;
    for r in results {
        match r {
            Err(e) => return Err(e),
            Ok(v) if out.is_none() => out = Some(v),
            Ok(_) => {}
        }
    }
    Ok(out.expect("one shard at least"))
}

/// One forward step, as each shard runs it.
struct Step<'a> {
    config: &'a GptOssConfig,
    tokens: &'a [u32],
    start: usize,
    wanted: LogitsWanted,
}

impl Step<'_> {
    fn run(&self, sh: &mut Shard, cache: &KvCache) -> Result<Vec<f32>> {
        if self.tokens.len() == 1 {
            return self.run_decode(sh, cache);
        }
        let (t, v) = (self.tokens.len(), self.config.vocab_size);
        let rows = if self.wanted == LogitsWanted::All {
            t
        } else {
            1
        };
        let out = if self.wanted == LogitsWanted::Argmax {
            TensorDesc::new(DType::I32, [1])
        } else {
            TensorDesc::new(DType::F32, [rows, v])
        };
        let pos: Vec<i32> = (self.start..self.start + t).map(|p| p as i32).collect();
        let inputs = [
            (
                TensorDesc::new(DType::I32, [t]),
                i32_bytes(self.tokens.iter().map(|x| *x as i32)),
            ),
            (TensorDesc::new(DType::I32, [t]), i32_bytes(pos)),
            (out, Vec::new()),
        ];
        let (plan, weights) = (&sh.plan, &sh.weights);
        with_buffers(sh.backend.as_mut(), &inputs, |be, ids| {
            let io = StepIo {
                ids: ids[0],
                positions: ids[1],
                logits: ids[2],
                gather: None,
            };
            let kv = KvBinding::Contiguous(cache);
            let graph = build_step(self.config, plan, weights, &kv, t, io, self.wanted);
            be.execute(&graph)?;
            if plan.rank != 0 {
                return Ok(Vec::new());
            }
            Ok(f32_from_bytes(&be.download(ids[2])?))
        })
    }
}

impl Step<'_> {
    /// A one-token step: the same as `run`'s general path, but on io buffers kept from step
    /// to step and with the graph of the previous such step when only the token and position
    /// (the buffers' contents) changed, so the host spends next to nothing between the GPU's
    /// steps.
    fn run_decode(&self, sh: &mut Shard, cache: &KvCache) -> Result<Vec<f32>> {
        let be = sh.backend.as_mut();
        let io = sh.decode.io(be, self.wanted, self.config.vocab_size)?;
        be.upload(io.ids, &(self.tokens[0] as i32).to_le_bytes())?;
        be.upload(io.positions, &(self.start as i32).to_le_bytes())?;
        let graph = sh
            .decode
            .graph(self.config, &sh.plan, &sh.weights, cache, io, self.wanted);
        be.execute(graph)?;
        if sh.plan.rank != 0 {
            return Ok(Vec::new());
        }
        Ok(f32_from_bytes(&be.download(io.logits)?))
    }
}

/// A shard's buffers and graphs for one-token steps (see [`Step::run_decode`]). The buffers
/// are allocated at the first such step and live as long as the model (a few bytes, and
/// `[1, V]` f32 once logits were asked for).
#[derive(Default)]
pub(crate) struct DecodeCache {
    ids: Option<BufferId>,
    positions: Option<BufferId>,
    /// `[1]` I32 for `LogitsWanted::Argmax`, `[1, V]` F32 for the others.
    argmax: Option<BufferId>,
    logits: Option<BufferId>,
    /// The graph last built for each `LogitsWanted`, and what it was built for.
    graphs: Vec<(DecodeKey, Graph)>,
}

/// What a one-token graph depends on besides the model: the io buffers, what it returns and
/// the KV cache it reads.
struct DecodeKey {
    io: StepIo,
    wanted: LogitsWanted,
    capacity: usize,
    dtype: DType,
    layers: Vec<(BufferId, BufferId)>,
}

impl DecodeKey {
    fn fits(&self, io: &StepIo, wanted: LogitsWanted, cache: &KvCache) -> bool {
        self.io == *io
            && self.wanted == wanted
            && self.capacity == cache.capacity
            && self.dtype == cache.dtype
            && self.layers == cache.layers
    }
}

/// Greedy steps handed to the backend at once (`greedy_continue`, `gptoss generate`):
/// DECODE_CHUNK first, doubling up to DECODE_CHUNK_MAX. Tokens come back in bursts of that many
/// (32: ~70 ms at 480 tok/s) and the host waits for the GPU once a burst (H100, 20b: ~150 us
/// of host time a burst, which step by step cost every token).
pub const DECODE_CHUNK: usize = 8;
pub const DECODE_CHUNK_MAX: usize = 32;

/// The sizes of successive greedy chunks: DECODE_CHUNK, doubling, then DECODE_CHUNK_MAX on.
pub fn decode_chunk_sizes() -> impl Iterator<Item = usize> {
    std::iter::successors(Some(DECODE_CHUNK), |&n| Some((2 * n).min(DECODE_CHUNK_MAX)))
}

impl DecodeCache {
    /// The step's io buffers, allocated the first time each is needed.
    fn io(&mut self, be: &mut dyn Backend, wanted: LogitsWanted, vocab: usize) -> Result<StepIo> {
        let mut get = |slot: &mut Option<BufferId>, desc: TensorDesc| -> Result<BufferId> {
            match *slot {
                Some(id) => Ok(id),
                None => Ok(*slot.insert(be.alloc(&desc)?)),
            }
        };
        let one = || TensorDesc::new(DType::I32, [1]);
        let ids = get(&mut self.ids, one())?;
        let positions = get(&mut self.positions, one())?;
        let logits = match wanted {
            LogitsWanted::Argmax => get(&mut self.argmax, one())?,
            LogitsWanted::All | LogitsWanted::Last => {
                get(&mut self.logits, TensorDesc::new(DType::F32, [1, vocab]))?
            }
        };
        Ok(StepIo {
            ids,
            positions,
            logits,
            gather: None,
        })
    }

    /// The one-token graph over `cache`: the previous one when it was built for the same
    /// buffers, else built (and kept) now.
    fn graph(
        &mut self,
        cfg: &GptOssConfig,
        plan: &ShardPlan,
        weights: &ModelWeights,
        cache: &KvCache,
        io: StepIo,
        wanted: LogitsWanted,
    ) -> &Graph {
        let at = match self.graphs.iter().position(|(k, _)| k.wanted == wanted) {
            Some(at) => at,
            None => {
                self.graphs.push((
                    DecodeKey {
                        io,
                        wanted,
                        capacity: 0,
                        dtype: cache.dtype,
                        layers: Vec::new(),
                    },
                    Graph::new(),
                ));
                self.graphs.len() - 1
            }
        };
        let (key, graph) = &mut self.graphs[at];
        if graph.nodes.is_empty() || !key.fits(&io, wanted, cache) {
            let kv = KvBinding::Contiguous(cache);
            build_step_into(graph, cfg, plan, weights, &kv, 1, io, wanted);
            *key = DecodeKey {
                io,
                wanted,
                capacity: cache.capacity,
                dtype: cache.dtype,
                layers: cache.layers.clone(),
            };
        }
        graph
    }
}

/// Little-endian bytes of i32 values (token ids, positions, slots).
pub(crate) fn i32_bytes(v: impl IntoIterator<Item = i32>) -> Vec<u8> {
    v.into_iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// f32 values of little-endian bytes (I32 results keep their bits: see `forward_argmax`).
pub(crate) fn f32_from_bytes(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Allocate one buffer per `(desc, bytes)` (uploading non-empty bytes), run `f` with their
/// ids, then free them all whatever `f` returned.
pub(crate) fn with_buffers<T>(
    be: &mut dyn Backend,
    specs: &[(TensorDesc, Vec<u8>)],
    f: impl FnOnce(&mut dyn Backend, &[BufferId]) -> Result<T>,
) -> Result<T> {
    let mut ids = Vec::with_capacity(specs.len());
    let staged = (|| {
        for (desc, bytes) in specs {
            ids.push(be.alloc(desc)?);
            if !bytes.is_empty() {
                be.upload(*ids.last().expect("just pushed"), bytes)?;
            }
        }
        Ok(())
    })();
    let out = staged.and_then(|_| f(be, &ids));
    for id in ids {
        be.free(id)?;
    }
    out
}

/// Index of the largest value, first on ties.
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}
