//! GPTOSS_WGPU_PROFILE=1: GPU time of every dispatch, from timestamp queries written at the
//! start and end of a compute pass of its own (only `Features::TIMESTAMP_QUERY` is needed),
//! aggregated by kernel, op, output shape and grid; plus host times per execute. The table goes
//! to stderr when the backend is dropped.
//!
//! Vulkan writes both timestamps at the bottom of the pipe, so a dispatch's interval runs from
//! the end of the work before it to its own end: barriers and launch gaps are counted in, and
//! the intervals of a step add up to about its GPU span.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Timestamps per query set (wgpu's maximum), two a dispatch.
const QUERIES: u32 = 4096;

/// The env var that turns profiling on.
pub const ENV: &str = "GPTOSS_WGPU_PROFILE";

pub fn wanted() -> bool {
    std::env::var(ENV).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// A query set with its resolve buffer and mappable copy.
struct Set {
    queries: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    read: wgpu::Buffer,
}

/// Host and GPU times of the executes of one kind of step (same graph shape).
#[derive(Default)]
struct Steps {
    count: u64,
    dispatches: u64,
    /// Recording the commands (host).
    record: Duration,
    /// Submit to the GPU's completion, as the host saw it (the wait).
    wait: Duration,
    /// Host time between the end of the previous execute and this one's start (the engine:
    /// downloads, sampling, graph building).
    between: Duration,
    between_n: u64,
    /// Sum of the dispatch intervals, and first start to last end (GPU clock, ns).
    gpu_sum_ns: f64,
    gpu_span_ns: f64,
}

pub struct Profiler {
    sets: Vec<Set>,
    period_ns: f64,
    /// The key of each dispatch recorded in the current execute, in order.
    pending: Vec<String>,
    /// Key -> (dispatches, total ns).
    table: HashMap<String, (u64, f64)>,
    steps: HashMap<String, Steps>,
    last_end: Option<Instant>,
}

impl Profiler {
    pub fn new(period_ns: f32) -> Profiler {
        Profiler {
            sets: Vec::new(),
            period_ns: period_ns as f64,
            pending: Vec::new(),
            table: HashMap::new(),
            steps: HashMap::new(),
            last_end: None,
        }
    }

    /// The timestamp writes of the next dispatch, labelled `key`.
    pub fn timestamps(&mut self, device: &wgpu::Device, key: String) -> (&wgpu::QuerySet, u32) {
        let i = self.pending.len() as u32 * 2;
        let set = (i / QUERIES) as usize;
        while self.sets.len() <= set {
            let bytes = QUERIES as u64 * 8;
            let buf = |usage, label| {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size: bytes,
                    usage,
                    mapped_at_creation: false,
                })
            };
            self.sets.push(Set {
                queries: device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("profile timestamps"),
                    ty: wgpu::QueryType::Timestamp,
                    count: QUERIES,
                }),
                resolve: buf(
                    wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                    "profile resolve",
                ),
                read: buf(
                    wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    "profile readback",
                ),
            });
        }
        self.pending.push(key);
        (&self.sets[set].queries, i % QUERIES)
    }

    /// Resolve this execute's timestamps into the mappable buffers (at the end of its commands).
    pub fn resolve(&self, enc: &mut wgpu::CommandEncoder) {
        let mut left = self.pending.len() as u32 * 2;
        for s in &self.sets {
            if left == 0 {
                break;
            }
            let n = left.min(QUERIES);
            enc.resolve_query_set(&s.queries, 0..n, &s.resolve, 0);
            enc.copy_buffer_to_buffer(&s.resolve, 0, &s.read, 0, n as u64 * 8);
            left -= n;
        }
    }

    /// The mappable buffers and bytes to read once the step is done.
    pub fn readbacks(&self) -> Vec<(&wgpu::Buffer, u64)> {
        let mut left = self.pending.len() as u64 * 2;
        let mut out = Vec::new();
        for s in &self.sets {
            if left == 0 {
                break;
            }
            let n = left.min(QUERIES as u64);
            out.push((&s.read, n * 8));
            left -= n;
        }
        out
    }

    /// Account one finished execute: `raw` are the readbacks' bytes (empty when the step failed
    /// before its submit), `class` names the kind of step.
    pub fn finish(&mut self, class: String, start: Instant, record: Duration, raw: &[Vec<u8>]) {
        let ticks: Vec<u64> = raw
            .iter()
            .flat_map(|b| b.chunks_exact(8))
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let now = Instant::now();
        let st = self.steps.entry(class).or_default();
        st.count += 1;
        st.dispatches += self.pending.len() as u64;
        st.record += record;
        st.wait += now.saturating_duration_since(start + record);
        if let Some(prev) = self.last_end {
            st.between += start.saturating_duration_since(prev);
            st.between_n += 1;
        }
        self.last_end = Some(now);
        if ticks.len() >= self.pending.len() * 2 && !self.pending.is_empty() {
            let ns = |a: u64, b: u64| b.saturating_sub(a) as f64 * self.period_ns;
            for (i, key) in self.pending.iter().enumerate() {
                let e = self.table.entry(key.clone()).or_default();
                e.0 += 1;
                e.1 += ns(ticks[2 * i], ticks[2 * i + 1]);
                st.gpu_sum_ns += ns(ticks[2 * i], ticks[2 * i + 1]);
            }
            st.gpu_span_ns += ns(ticks[0], ticks[ticks.len().min(self.pending.len() * 2) - 1]);
        }
        self.pending.clear();
    }

    pub fn report(&self, device: &str) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let mut out = format!("{ENV} on {device}\nsteps (means per execute):\n");
        out += &format!(
            "{:>7} {:>10} {:>10} {:>10} {:>10} {:>10} {:>12}  step\n",
            "count", "dispatch", "gpu ms", "span ms", "record ms", "wait ms", "between ms"
        );
        let mut steps: Vec<_> = self.steps.iter().collect();
        steps.sort_by_key(|s| std::cmp::Reverse(s.1.count));
        for (class, s) in steps {
            let n = s.count.max(1) as f64;
            out += &format!(
                "{:>7} {:>10.0} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>12.3}  {class}\n",
                s.count,
                s.dispatches as f64 / n,
                s.gpu_sum_ns / n / 1e6,
                s.gpu_span_ns / n / 1e6,
                ms(s.record) / n,
                ms(s.wait) / n,
                ms(s.between) / s.between_n.max(1) as f64,
            );
        }
        let mut rows: Vec<_> = self.table.iter().collect();
        rows.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
        let total = rows.iter().fold(0.0, |t, r| t + r.1 .1);
        out += &format!(
            "dispatches by total GPU time ({:.3} ms in all):\n{:>10} {:>8} {:>10} {:>6}  \
             kernel: op -> output shape, workgroups\n",
            total / 1e6,
            "total ms",
            "count",
            "us each",
            "%"
        );
        for (key, (n, ns)) in rows {
            out += &format!(
                "{:>10.3} {:>8} {:>10.2} {:>6.1}  {key}\n",
                ns / 1e6,
                n,
                ns / 1e3 / *n as f64,
                100.0 * ns / total.max(1e-9)
            );
        }
        out
    }
}
