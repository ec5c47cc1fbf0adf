//! What every handler shares: the engine handle, the tokenizer, settings, stored responses.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use gptoss_models::harmony::ChatMessage;
use gptoss_models::tokenizer::Tokenizer;

use crate::engine::EngineHandle;

/// Responses kept for `previous_response_id` (oldest dropped first).
const STORED_RESPONSES: usize = 1024;

/// Stored conversations by response id, and the ids oldest first.
type Store = (HashMap<String, Vec<ChatMessage>>, VecDeque<String>);

pub struct AppState {
    pub engine: EngineHandle,
    pub tok: &'static Tokenizer,
    /// The id clients pass as `model` (and GET /v1/models lists).
    pub model_id: String,
    /// Longest prompt + output, in tokens.
    pub max_context: usize,
    pub vocab_size: usize,
    pub api_key: Option<String>,
    pub created: u64,
    pub shutting_down: AtomicBool,
    counter: AtomicU64,
    responses: Mutex<Store>,
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl AppState {
    pub fn new(
        engine: EngineHandle,
        tok: &'static Tokenizer,
        model_id: String,
        max_context: usize,
        vocab_size: usize,
        api_key: Option<String>,
    ) -> Self {
        AppState {
            engine,
            tok,
            model_id,
            max_context,
            vocab_size,
            api_key,
            created: unix_now(),
            shutting_down: AtomicBool::new(false),
            counter: AtomicU64::new(0),
            responses: Mutex::new((HashMap::new(), VecDeque::new())),
        }
    }

    /// A fresh id like `chatcmpl-18c3…`: time, a process-wide counter and a pinch of hashing.
    pub fn new_id(&self, prefix: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mut x = nanos ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (std::process::id() as u64);
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        format!("{prefix}{x:016x}{n:x}")
    }

    /// The conversation (input + output) of a stored response.
    pub fn stored_response(&self, id: &str) -> Option<Vec<ChatMessage>> {
        self.responses.lock().ok()?.0.get(id).cloned()
    }

    pub fn store_response(&self, id: String, conversation: Vec<ChatMessage>) {
        let Ok(mut g) = self.responses.lock() else {
            return;
        };
        let (map, order) = &mut *g;
        if map.insert(id.clone(), conversation).is_none() {
            order.push_back(id);
        }
        while order.len() > STORED_RESPONSES {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
    }
}
