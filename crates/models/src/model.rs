//! A gpt-oss model loaded on a backend, and sessions that run it token by token.

use std::path::Path;

use gptoss_core::{Backend, DType, Error, Result, TensorDesc};

use crate::checkpoint::Checkpoint;
use crate::config::GptOssConfig;
use crate::graph_builder::{build_step, LogitsWanted, StepIo};
use crate::kv_cache::KvCache;
use crate::weights::ModelWeights;

pub struct Model {
    pub config: GptOssConfig,
    pub weights: ModelWeights,
    backend: Box<dyn Backend>,
}

/// One sequence's state: its KV cache and how many positions it holds.
#[derive(Debug)]
pub struct Session {
    cache: KvCache,
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
        self.cache.capacity
    }
}

impl Model {
    /// Load a model folder onto `backend`. `progress(done_bytes, total_bytes)` follows the upload.
    pub fn load(
        dir: &Path,
        mut backend: Box<dyn Backend>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Model> {
        let config = GptOssConfig::load(dir)?;
        let ckpt = Checkpoint::open(dir)?;
        let weights = ModelWeights::load(&config, &ckpt, backend.as_mut(), progress)?;
        Ok(Model {
            config,
            weights,
            backend,
        })
    }

    /// A model from weights already on `backend` (e.g. a synthetic model).
    pub fn from_parts(
        config: GptOssConfig,
        weights: ModelWeights,
        backend: Box<dyn Backend>,
    ) -> Model {
        Model {
            config,
            weights,
            backend,
        }
    }

    /// The backend, for work outside the model graph (bandwidth probes in `gptoss bench`).
    pub fn backend_mut(&mut self) -> &mut dyn Backend {
        self.backend.as_mut()
    }

    pub fn backend_name(&self) -> &str {
        self.backend.name()
    }

    /// A new empty sequence with room for `capacity` positions (0 = max_position_embeddings).
    pub fn new_session(&mut self, capacity: usize) -> Result<Session> {
        let capacity = if capacity == 0 {
            self.config.max_position_embeddings
        } else {
            capacity
        };
        let cache = KvCache::alloc(self.backend.as_mut(), &self.config, capacity, DType::F32)?;
        Ok(Session { cache, len: 0 })
    }

    pub fn free_session(&mut self, s: Session) -> Result<()> {
        s.cache.free(self.backend.as_mut())
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
        let v = self.config.vocab_size;
        if tokens.is_empty() {
            return Err(Error::Input("no tokens to run".into()));
        }
        if let Some((i, t)) = tokens.iter().enumerate().find(|(_, t)| **t as usize >= v) {
            return Err(Error::Input(format!(
                "token id {t} (at index {i}) is out of range: this model's vocab_size is {v}"
            )));
        }
        let end = session.len + tokens.len();
        if end > session.capacity() {
            return Err(Error::Input(format!(
                "{} new tokens after {} in context need {end} positions, but the context holds {}; \
                 shorten the prompt or raise --max-context",
                tokens.len(),
                session.len,
                session.capacity()
            )));
        }
        let t = tokens.len();
        let rows = if wanted == LogitsWanted::All { t } else { 1 };
        let be = self.backend.as_mut();
        let ids = be.alloc(&TensorDesc::new(DType::I32, [t]))?;
        let positions = be.alloc(&TensorDesc::new(DType::I32, [t]))?;
        let logits = if wanted == LogitsWanted::Argmax {
            be.alloc(&TensorDesc::new(DType::I32, [1]))?
        } else {
            be.alloc(&TensorDesc::new(DType::F32, [rows, v]))?
        };
        let io = StepIo {
            ids,
            positions,
            logits,
        };
        let result = (|| {
            be.upload(
                ids,
                &tokens
                    .iter()
                    .flat_map(|x| (*x as i32).to_le_bytes())
                    .collect::<Vec<u8>>(),
            )?;
            let pos: Vec<u8> = (session.len..end)
                .flat_map(|p| (p as i32).to_le_bytes())
                .collect();
            be.upload(positions, &pos)?;
            let graph = build_step(&self.config, &self.weights, &session.cache, t, io, wanted);
            be.execute(&graph)?;
            let bytes = be.download(logits)?;
            Ok(bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect::<Vec<f32>>())
        })();
        for id in [ids, positions, logits] {
            be.free(id)?;
        }
        let out = result?;
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
            let mut out = Vec::with_capacity(max_tokens);
            let mut next_input = prompt.to_vec();
            while out.len() < max_tokens {
                let tok = self.forward_argmax(&mut session, &next_input)?;
                out.push(tok);
                on_token(tok);
                if stop.contains(&tok) {
                    break;
                }
                next_input = vec![tok];
            }
            Ok(out)
        })();
        self.free_session(session)?;
        result
    }
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
