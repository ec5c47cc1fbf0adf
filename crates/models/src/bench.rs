//! `gptoss bench`: prefill and decode speed, and decode as a fraction of the memory roofline.

use std::time::Instant;

use gptoss_core::graph::{Op, ValueKind};
use gptoss_core::{Backend, DType, Graph, Result, TensorDesc};
use serde::Serialize;

use crate::batch::{BatchItem, PagedKv, PagedSeq, PAGE_SIZE};
use crate::model::{argmax, Model};
use crate::roofline::{kv_bytes_per_token, weight_bytes_per_token};
use crate::LogitsWanted;

/// One measured configuration.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    pub batch: usize,
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
    pub decode_ms_per_token: f64,
    /// Bytes a decode step must read (weights + KV at the mean decode context).
    pub bytes_per_token: u64,
    /// decode_tok_s / (bandwidth / bytes_per_token)
    pub roofline_fraction: Option<f64>,
}

/// Time `f` once.
fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
    let t0 = Instant::now();
    let out = f()?;
    Ok((out, t0.elapsed().as_secs_f64()))
}

/// Smallest vectors `measure_bandwidth` falls back to (MiB).
const MIN_BANDWIDTH_MIB: usize = 16;

/// Device memory bandwidth in bytes/s, measured through the backend itself: the better of an
/// `Add` of two large vectors (reads 2N and writes N floats) and a one-token `Linear` over a
/// bf16 matrix of the same size (reads it and writes one row: a decode step's traffic, which a
/// GPU's memory serves faster than a mix of reads and writes; H100: 2.70 TB/s for the Add
/// against 3.08 for a 1.16 GB GEMV). Each the best of a few runs after a warm-up, less the
/// same op's time on a few KiB (the launch and the synchronisation, ~30 us on a GPU: 10% of a
/// 512 MiB GEMV's time), so the rate is the memory's, not the host round trip's. Vectors of
/// `mib` MiB, or half as large again and again (to MIN_BANDWIDTH_MIB) where the backend
/// refuses them, e.g. above a GPU's largest binding; returns the bandwidth and the size used.
/// A backend that cannot run the Linear is measured by the Add alone.
pub fn measure_bandwidth(backend: &mut dyn Backend, mib: usize) -> Result<(f64, usize)> {
    let mut mib = mib.max(1);
    loop {
        match bandwidth_of_add(backend, mib) {
            Ok(bw) => {
                let read = bandwidth_of_linear(backend, mib).unwrap_or(0.0);
                return Ok((bw.max(read), mib));
            }
            Err(_) if mib > MIN_BANDWIDTH_MIB => mib /= 2,
            Err(e) => return Err(e),
        }
    }
}

/// `len` bytes of `pattern` over and over (copied in doubling runs: hundreds of MiB fast).
fn repeated(pattern: &[u8], len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&pattern[..pattern.len().min(len)]);
    while v.len() < len {
        let n = v.len().min(len - v.len());
        v.extend_from_within(..n);
    }
    v
}

/// Columns of `bandwidth_of_linear`'s matrix (gpt-oss's widest activation row).
const LINEAR_PROBE_K: usize = 4096;

/// The bytes/s of `y [1, n] = x [1, k] W^T` over W [n, k] bf16 of `mib` MiB (less one row's).
fn bandwidth_of_linear(backend: &mut dyn Backend, mib: usize) -> Result<f64> {
    let k = LINEAR_PROBE_K;
    let x: Vec<u8> = (0..k)
        .flat_map(|i| ((i % 13) as f32 * 0.25).to_le_bytes())
        .collect();
    let mut linear = |n: usize| {
        // bf16 values 0, 1/64, .., 15/64 (finite, so no NaN work on any backend).
        let w = repeated(
            &(0..16)
                .flat_map(|i| (((i as f32 / 64.0).to_bits() >> 16) as u16).to_le_bytes())
                .collect::<Vec<u8>>(),
            n * k * 2,
        );
        time_of_op(
            backend,
            Op::Linear,
            [
                (TensorDesc::new(DType::F32, [1, k]), &x[..]),
                (TensorDesc::new(DType::BF16, [n, k]), &w[..]),
            ],
            TensorDesc::new(DType::F32, [1, n]),
        )
    };
    let small = linear(1)?;
    let large = linear(((mib << 20) / (2 * k)).max(1))?;
    Ok(marginal_rate(small, large))
}

/// The bytes/s of an `Add` of two vectors of `mib` MiB (reads 2N, writes N floats; less a
/// 4 KiB Add's).
fn bandwidth_of_add(backend: &mut dyn Backend, mib: usize) -> Result<f64> {
    let mut add = |n: usize| {
        let desc = TensorDesc::new(DType::F32, [1, n]);
        let fill = repeated(
            &(0..251)
                .flat_map(|i| (i as f32 * 0.5).to_le_bytes())
                .collect::<Vec<u8>>(),
            n * 4,
        );
        time_of_op(
            backend,
            Op::Add,
            [(desc.clone(), &fill[..]), (desc.clone(), &fill[..])],
            desc,
        )
    };
    let small = add(1024)?;
    let large = add((mib << 20) / 4)?;
    Ok(marginal_rate(small, large))
}

/// Bytes/s of the difference between a large run and a small one of the same op, each (bytes,
/// seconds): the fixed cost of a run (launch, synchronisation) taken out. Where the small run
/// was not faster (timer noise on a tiny op), the large run's own rate.
fn marginal_rate((small_bytes, small_s): (usize, f64), (bytes, s): (usize, f64)) -> f64 {
    if s > small_s && bytes > small_bytes {
        (bytes - small_bytes) as f64 / (s - small_s)
    } else {
        bytes as f64 / s
    }
}

/// The bytes (of the two inputs, uploaded from their bytes, and the output) and the seconds of
/// one `op` node: the best of 5 runs after a warm-up. Whatever was allocated goes back, also
/// when a later step failed.
fn time_of_op(
    backend: &mut dyn Backend,
    op: Op,
    inputs: [(TensorDesc, &[u8]); 2],
    output: TensorDesc,
) -> Result<(usize, f64)> {
    let bytes = inputs.iter().map(|(d, _)| d.byte_size()).sum::<usize>() + output.byte_size();
    let mut bufs = Vec::new();
    let run = (|| {
        let mut g = Graph::new();
        let mut ins = Vec::new();
        for (i, (desc, data)) in inputs.iter().enumerate() {
            let b = backend.alloc(desc)?;
            bufs.push(b);
            backend.upload(b, data)?;
            ins.push(g.add_value(format!("in{i}"), desc.clone(), ValueKind::Input(b)));
        }
        let b = backend.alloc(&output)?;
        bufs.push(b);
        let out = g.add_value("out", output.clone(), ValueKind::Output(b));
        g.push(op, ins, vec![out]);
        let mut best = f64::MAX;
        for i in 0..6 {
            let t0 = Instant::now();
            backend.execute(&g)?; // synchronous by the Backend contract
            let el = t0.elapsed().as_secs_f64();
            if i > 0 {
                best = best.min(el);
            }
        }
        Ok((bytes, best))
    })();
    for b in bufs {
        backend.free(b)?;
    }
    run
}

/// `n` pseudo-random token ids below `vocab`.
fn random_tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut state = seed | 1;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) % vocab as u64) as u32
        })
        .collect()
}

/// `batch` sequences decoding together over a paged KV cache (continuous batching's steady
/// state): each prompt is prefilled in its own step, then every step advances all of them by
/// one greedy token. Decode tok/s counts the tokens of all sequences.
pub fn run_batch(
    model: &mut Model,
    batch: usize,
    prompt: usize,
    gen: usize,
    bandwidth: Option<f64>,
    seed: u64,
) -> Result<BenchResult> {
    let v = model.config.vocab_size;
    let prompts: Vec<Vec<u32>> = (0..batch)
        .map(|b| random_tokens(prompt, v, seed + b as u64))
        .collect();
    let per_seq = PagedKv::pages_for(prompt + gen) * PAGE_SIZE;
    let mut kv = model.new_paged_kv(batch * per_seq + PAGE_SIZE)?;
    let mut seqs: Vec<PagedSeq> = (0..batch).map(|_| PagedSeq::new()).collect();
    let run = (|| {
        // Warm-up step (kernel compiles), then the timed prefills.
        let mut warm = PagedSeq::new();
        model.forward_batch_argmax(
            &mut kv,
            &mut [BatchItem {
                seq: &mut warm,
                tokens: &prompts[0][..prompt.min(4)],
            }],
        )?;
        kv.release(&mut warm);
        let mut next = vec![0u32; batch];
        let (_, prefill_s) = timed(|| {
            for (b, seq) in seqs.iter_mut().enumerate() {
                let item = BatchItem {
                    seq,
                    tokens: &prompts[b],
                };
                next[b] = model.forward_batch_argmax(&mut kv, &mut [item])?[0];
            }
            Ok(())
        })?;
        let (_, decode_s) = timed(|| {
            for _ in 0..gen {
                let feeds: Vec<[u32; 1]> = next.iter().map(|t| [*t]).collect();
                let mut items: Vec<BatchItem> = seqs
                    .iter_mut()
                    .zip(&feeds)
                    .map(|(seq, f)| BatchItem { seq, tokens: f })
                    .collect();
                next = model.forward_batch_argmax(&mut kv, &mut items)?;
            }
            Ok(())
        })?;
        Ok((prefill_s, decode_s))
    })();
    for s in &mut seqs {
        kv.release(s);
    }
    model.free_paged_kv(kv)?;
    let (prefill_s, decode_s) = run?;
    Ok(BenchResult::from_times(
        model, batch, prompt, gen, prefill_s, decode_s, bandwidth,
    ))
}

/// Tokens of the untimed warm-up prefill (at least the backends' many-token thresholds).
const WARM_PREFILL: usize = 128;

/// Prefill `prompt` random tokens, then decode `gen` tokens greedily, at batch 1.
pub fn run(
    model: &mut Model,
    prompt: usize,
    gen: usize,
    bandwidth: Option<f64>,
    seed: u64,
) -> Result<BenchResult> {
    let tokens = random_tokens(prompt, model.config.vocab_size, seed);
    // Warm-up, untimed: compiles kernels, fills caches, and with up to WARM_PREFILL tokens
    // also runs the many-token paths (tensor-core kernels, cuBLAS, whose first calls load
    // code) that the timed prefill takes.
    let warm_len = tokens.len().min(WARM_PREFILL);
    let mut warm = model.new_session(warm_len + 1)?;
    model.forward(&mut warm, &tokens[..warm_len], LogitsWanted::Last)?;
    model.forward(&mut warm, &[1], LogitsWanted::Last)?;
    model.free_session(warm)?;

    let mut s = model.new_session(prompt + gen)?;
    let (logits, prefill_s) = timed(|| model.forward(&mut s, &tokens, LogitsWanted::Last))?;
    let next = argmax(&logits) as u32;
    // Greedy decode as `generate_greedy` runs it: chunks of steps a backend call
    // (`greedy_continue`), the argmax on the backend, 4 bytes a token back.
    let (_, decode_s) = timed(|| model.greedy_continue(&mut s, next, gen, &[], &mut |_| {}))?;
    model.free_session(s)?;
    Ok(BenchResult::from_times(
        model, 1, prompt, gen, prefill_s, decode_s, bandwidth,
    ))
}

impl BenchResult {
    /// The figures of `batch` sequences that prefilled `prompt` tokens each in `prefill_s`
    /// and then decoded `gen` steps (one token each per step) in `decode_s`. A step reads the
    /// weights once (counted as the active experts': a lower bound at large batches, where
    /// most experts are hit) plus each sequence's KV at the mean decode context.
    fn from_times(
        model: &Model,
        batch: usize,
        prompt: usize,
        gen: usize,
        prefill_s: f64,
        decode_s: f64,
        bandwidth: Option<f64>,
    ) -> BenchResult {
        let mean_ctx = prompt + gen / 2;
        let bytes = weight_bytes_per_token(
            &model.config,
            model.float_dtype(),
            model.dequantized_experts,
        ) + batch as u64 * kv_bytes_per_token(&model.config, mean_ctx, DType::F32);
        let steps_per_s = gen as f64 / decode_s;
        BenchResult {
            prompt_tokens: prompt,
            gen_tokens: gen,
            batch,
            prefill_tok_s: (batch * prompt) as f64 / prefill_s,
            decode_tok_s: batch as f64 * steps_per_s,
            decode_ms_per_token: 1000.0 * decode_s / gen as f64,
            bytes_per_token: bytes,
            roofline_fraction: bandwidth.map(|bw| steps_per_s / (bw / bytes as f64)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gptoss_core::{BufferId, Error, ProbeReport};
    use std::collections::HashMap;

    /// Host buffers that refuse any larger than `limit` bytes; runs Add only (other ops are
    /// errors, as on a backend without them).
    struct Limited {
        limit: usize,
        bufs: HashMap<u64, Vec<u8>>,
        next: u64,
    }

    impl Backend for Limited {
        fn name(&self) -> &str {
            "limited"
        }
        fn probe(&self) -> ProbeReport {
            ProbeReport { devices: vec![] }
        }
        fn alloc(&mut self, desc: &TensorDesc) -> Result<BufferId> {
            if desc.byte_size() > self.limit {
                return Err(Error::Input(format!(
                    "{} bytes is above the limit",
                    desc.byte_size()
                )));
            }
            self.next += 1;
            self.bufs.insert(self.next, vec![0; desc.byte_size()]);
            Ok(BufferId(self.next))
        }
        fn free(&mut self, id: BufferId) -> Result<()> {
            self.bufs.remove(&id.0);
            Ok(())
        }
        fn upload(&mut self, id: BufferId, data: &[u8]) -> Result<()> {
            self.bufs.insert(id.0, data.to_vec());
            Ok(())
        }
        fn download(&mut self, id: BufferId) -> Result<Vec<u8>> {
            Ok(self.bufs[&id.0].clone())
        }
        fn execute(&mut self, graph: &Graph) -> Result<()> {
            for node in &graph.nodes {
                if node.op != Op::Add {
                    return Err(Error::Input("the mock runs Add only".into()));
                }
                let buf = |v: gptoss_core::ValueId| match graph.value(v).kind {
                    ValueKind::Input(b) | ValueKind::Output(b) => b.0,
                    _ => unreachable!("the bandwidth graph binds every value"),
                };
                let (a, b) = (
                    &self.bufs[&buf(node.inputs[0])],
                    &self.bufs[&buf(node.inputs[1])],
                );
                let sum: Vec<u8> = a
                    .chunks_exact(4)
                    .zip(b.chunks_exact(4))
                    .flat_map(|(x, y)| {
                        let f = |c: &[u8]| f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                        (f(x) + f(y)).to_le_bytes()
                    })
                    .collect();
                self.bufs.insert(buf(node.outputs[0]), sum);
            }
            Ok(())
        }
    }

    #[test]
    fn repeated_patterns_fill_exactly() {
        assert_eq!(repeated(&[1, 2, 3], 8), [1, 2, 3, 1, 2, 3, 1, 2]);
        assert_eq!(repeated(&[1, 2, 3], 2), [1, 2]);
        assert!(repeated(&[7], 0).is_empty());
    }

    #[test]
    fn bandwidth_takes_out_the_fixed_cost_of_a_run() {
        // 1 KB in 11 us and 1 MB in 110 us: 10 us a run, the memory at 1e10 bytes/s.
        let rate = marginal_rate((1000, 11e-6), (1_000_000, 110e-6));
        assert!((rate - 999_000.0 / 99e-6).abs() < 1.0, "{rate}");
        // A small run no faster (noise): the large run's own rate.
        assert_eq!(marginal_rate((1000, 2e-3), (1_000_000, 1e-3)), 1e9);
    }

    #[test]
    fn bandwidth_vectors_shrink_to_what_the_backend_takes_and_nothing_leaks() {
        let mut be = Limited {
            limit: 40 << 20,
            bufs: HashMap::new(),
            next: 0,
        };
        let (bw, mib) = measure_bandwidth(&mut be, 128).unwrap();
        assert_eq!(mib, 32, "128 and 64 MiB refused, 32 taken");
        assert!(bw > 0.0);
        assert!(be.bufs.is_empty(), "every buffer freed");
        be.limit = 1 << 20;
        let e = measure_bandwidth(&mut be, 64).unwrap_err().to_string();
        assert!(e.contains("above the limit"), "{e}");
        assert!(be.bufs.is_empty(), "every buffer freed after a refusal");
    }
}
