//! Counters of the engine, shown by GET /metrics in the Prometheus text format.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Stats {
    pub queue_depth: AtomicUsize,
    pub running: AtomicUsize,
    pub requests_total: AtomicU64,
    prompt_tokens: AtomicU64,
    generated_tokens: AtomicU64,
    ttft_us_sum: AtomicU64,
    ttft_count: AtomicU64,
    /// KV-cache pages holding positions of running requests.
    kv_pages_used: AtomicUsize,
    /// Pages set aside for running requests (their prompt + max_tokens).
    kv_pages_reserved: AtomicUsize,
    kv_pages_total: usize,
    /// Batched forward passes, the sequences and tokens they ran, the most sequences in one.
    steps: AtomicU64,
    step_sequences: AtomicU64,
    step_tokens: AtomicU64,
    step_sequences_max: AtomicUsize,
    /// Generated tokens per second over the last window, as f64 bits.
    rate_bits: AtomicU64,
    window: Mutex<(Instant, u64)>,
}

impl Stats {
    /// Counters of an engine whose KV cache has `kv_pages_total` pages.
    pub fn new(kv_pages_total: usize) -> Self {
        Stats {
            queue_depth: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            requests_total: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            generated_tokens: AtomicU64::new(0),
            ttft_us_sum: AtomicU64::new(0),
            ttft_count: AtomicU64::new(0),
            kv_pages_used: AtomicUsize::new(0),
            kv_pages_reserved: AtomicUsize::new(0),
            kv_pages_total,
            steps: AtomicU64::new(0),
            step_sequences: AtomicU64::new(0),
            step_tokens: AtomicU64::new(0),
            step_sequences_max: AtomicUsize::new(0),
            rate_bits: AtomicU64::new(0f64.to_bits()),
            window: Mutex::new((Instant::now(), 0)),
        }
    }

    pub fn add_prompt_tokens(&self, n: usize) {
        self.prompt_tokens.fetch_add(n as u64, Ordering::Relaxed);
    }
    pub fn add_generated(&self, n: usize) {
        self.generated_tokens.fetch_add(n as u64, Ordering::Relaxed);
    }
    pub fn record_ttft(&self, d: Duration) {
        self.ttft_us_sum
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.ttft_count.fetch_add(1, Ordering::Relaxed);
    }
    /// The KV cache now: pages in use, pages reserved by running requests.
    pub fn set_kv(&self, used: usize, reserved: usize) {
        self.kv_pages_used.store(used, Ordering::Relaxed);
        self.kv_pages_reserved.store(reserved, Ordering::Relaxed);
    }
    pub fn kv_pages_used(&self) -> usize {
        self.kv_pages_used.load(Ordering::Relaxed)
    }
    pub fn kv_pages_reserved(&self) -> usize {
        self.kv_pages_reserved.load(Ordering::Relaxed)
    }
    pub fn kv_pages_total(&self) -> usize {
        self.kv_pages_total
    }
    /// One batched forward pass of `sequences` sequences and `tokens` tokens in all.
    pub fn record_step(&self, sequences: usize, tokens: usize) {
        self.steps.fetch_add(1, Ordering::Relaxed);
        self.step_sequences
            .fetch_add(sequences as u64, Ordering::Relaxed);
        self.step_tokens.fetch_add(tokens as u64, Ordering::Relaxed);
        self.step_sequences_max
            .fetch_max(sequences, Ordering::Relaxed);
    }
    /// Batched forward passes run.
    pub fn steps(&self) -> u64 {
        self.steps.load(Ordering::Relaxed)
    }
    /// The most sequences one forward pass ran.
    pub fn step_sequences_max(&self) -> usize {
        self.step_sequences_max.load(Ordering::Relaxed)
    }

    /// Updates the tokens/s gauge about once a second (called by the engine each round).
    pub fn tick(&self) {
        let Ok(mut w) = self.window.lock() else {
            return;
        };
        let elapsed = w.0.elapsed();
        if elapsed >= Duration::from_secs(1) {
            let now = self.generated_tokens.load(Ordering::Relaxed);
            let rate = (now - w.1) as f64 / elapsed.as_secs_f64();
            self.rate_bits.store(rate.to_bits(), Ordering::Relaxed);
            *w = (Instant::now(), now);
        }
    }

    /// The Prometheus exposition text.
    pub fn render(&self, model: &str) -> String {
        let model = model.replace(['"', '\\', '\n'], "_");
        let g = |x: u64| x as f64;
        let ttft_n = self.ttft_count.load(Ordering::Relaxed);
        let ttft_sum = self.ttft_us_sum.load(Ordering::Relaxed) as f64 / 1e6;
        let used = self.kv_pages_used() as f64;
        let kv_frac = if self.kv_pages_total == 0 {
            0.0
        } else {
            used / self.kv_pages_total as f64
        };
        let rows: [(&str, &str, &str, f64); 16] = [
            (
                "gptoss_queue_depth",
                "gauge",
                "Requests waiting for the engine",
                self.queue_depth.load(Ordering::Relaxed) as f64,
            ),
            (
                "gptoss_running_requests",
                "gauge",
                "Requests being prefilled or decoded",
                self.running.load(Ordering::Relaxed) as f64,
            ),
            (
                "gptoss_requests_total",
                "counter",
                "Generation requests accepted",
                g(self.requests_total.load(Ordering::Relaxed)),
            ),
            (
                "gptoss_prompt_tokens_total",
                "counter",
                "Prompt tokens prefilled",
                g(self.prompt_tokens.load(Ordering::Relaxed)),
            ),
            (
                "gptoss_generation_tokens_total",
                "counter",
                "Tokens generated",
                g(self.generated_tokens.load(Ordering::Relaxed)),
            ),
            (
                "gptoss_generation_tokens_per_second",
                "gauge",
                "Tokens generated per second (last window)",
                f64::from_bits(self.rate_bits.load(Ordering::Relaxed)),
            ),
            (
                "gptoss_time_to_first_token_seconds_sum",
                "counter",
                "Sum of times to first token",
                ttft_sum,
            ),
            (
                "gptoss_time_to_first_token_seconds_count",
                "counter",
                "Requests that produced a first token",
                g(ttft_n),
            ),
            (
                "gptoss_kv_cache_pages_used",
                "gauge",
                "KV-cache pages holding positions of running requests",
                used,
            ),
            (
                "gptoss_kv_cache_pages_reserved",
                "gauge",
                "KV-cache pages set aside for running requests (prompt + max_tokens)",
                self.kv_pages_reserved() as f64,
            ),
            (
                "gptoss_kv_cache_pages_total",
                "gauge",
                "KV-cache pages in all (--kv-cache-tokens)",
                self.kv_pages_total as f64,
            ),
            (
                "gptoss_kv_cache_page_size",
                "gauge",
                "Positions per KV-cache page",
                gptoss_models::batch::PAGE_SIZE as f64,
            ),
            (
                "gptoss_kv_cache_usage_ratio",
                "gauge",
                "KV-cache pages used over pages in all",
                kv_frac,
            ),
            (
                "gptoss_engine_steps_total",
                "counter",
                "Batched forward passes (one per engine round)",
                g(self.steps()),
            ),
            (
                "gptoss_engine_step_sequences_total",
                "counter",
                "Sequences run by the batched forward passes (over steps: the mean batch)",
                g(self.step_sequences.load(Ordering::Relaxed)),
            ),
            (
                "gptoss_engine_step_tokens_total",
                "counter",
                "Tokens run by the batched forward passes (decodes and prefill chunks)",
                g(self.step_tokens.load(Ordering::Relaxed)),
            ),
        ];
        let mut out = String::new();
        for (name, kind, help, v) in rows {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{model=\"{model}\"}} {v}\n"
            ));
        }
        out
    }
}
