//! Counters of the engine, shown by GET /metrics in the Prometheus text format.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
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
    kv_positions: AtomicI64,
    kv_budget: usize,
    /// Generated tokens per second over the last window, as f64 bits.
    rate_bits: AtomicU64,
    window: Mutex<(Instant, u64)>,
}

impl Stats {
    pub fn new(kv_budget: usize) -> Self {
        Stats {
            queue_depth: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            requests_total: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            generated_tokens: AtomicU64::new(0),
            ttft_us_sum: AtomicU64::new(0),
            ttft_count: AtomicU64::new(0),
            kv_positions: AtomicI64::new(0),
            kv_budget,
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
    pub fn kv_add(&self, positions: i64) {
        self.kv_positions.fetch_add(positions, Ordering::Relaxed);
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
        let kv = self.kv_positions.load(Ordering::Relaxed).max(0) as f64;
        let kv_frac = if self.kv_budget == 0 {
            0.0
        } else {
            kv / self.kv_budget as f64
        };
        let rows: [(&str, &str, &str, f64); 10] = [
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
                "gptoss_kv_cache_positions",
                "gauge",
                "KV-cache positions reserved by active requests",
                kv,
            ),
            (
                "gptoss_kv_cache_usage_ratio",
                "gauge",
                "Reserved KV positions over max_batch x max_context",
                kv_frac,
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
