//! An example gptoss backend plugin: the template to copy when writing your own.
//!
//! It keeps every tensor in host memory, so it only supplies kernels: the SDK's
//! [`HostExecutor`] owns the buffers, walks the graph and calls [`ExampleKernels`] once per
//! node. Each op is a plain f32 loop written for reading, not for speed. Float tensors arrive
//! as f32 (BF16 weights are widened on upload), ids and positions as i32, MXFP4 experts as
//! bytes. The graph is validated before `execute`, so shapes and dtypes match what
//! `gptoss_core::graph::Op` documents; values (token ids, positions, expert ids) are checked
//! here, and a bad one is an error, never a panic.
//!
//! Build it with `cargo build --release` and put `libgptoss_backend_example.so` where gptoss
//! looks for plugins (see docs/plugins.md).

use gptoss_core::host::{HostExecutor, HostKernel, HostKernels, HostTensor};
use gptoss_core::mxfp4::decode_row;
use gptoss_core::plugin::{HostPlugin, PluginOptions};
use gptoss_core::{DeviceReport, Error, Op, ProbeReport, Result};

/// The kernels of the "example" backend. One type handles every op.
pub struct ExampleKernels;

impl HostPlugin for ExampleKernels {
    /// What `--backend` and `backend = ".."` call this backend.
    const NAME: &'static str = "example";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn probe_devices() -> ProbeReport {
        // Score 1 ties with cpu, and the config's preference list (where "cpu" is listed and
        // "example" is not) breaks the tie: this slow backend only runs when asked for.
        ProbeReport {
            devices: vec![DeviceReport {
                name: "host cpu".into(),
                score: 1,
                reason: "example plugin (reference loops, slow)".into(),
                ..Default::default()
            }],
        }
    }

    fn create(_options: &PluginOptions) -> Result<Self> {
        Ok(ExampleKernels)
    }
}

impl HostKernels for ExampleKernels {
    fn kernel(&self, op: &Op) -> Option<&dyn HostKernel> {
        // Return None for an op you do not implement: this example runs unsplit models
        // (LocalExperts only appears in split runs; the executor itself sums AllReduceSum).
        match op {
            Op::LocalExperts { .. } | Op::AllReduceSum => None,
            _ => Some(self),
        }
    }

    fn probe(&self) -> ProbeReport {
        Self::probe_devices()
    }
}

impl HostKernel for ExampleKernels {
    fn run(&self, op: &Op, ins: &[&HostTensor], outs: &mut [&mut HostTensor]) -> Result<()> {
        match *op {
            Op::Embed => embed(ins[0], ins[1].i32()?, outs[0].f32_mut()?),
            Op::RmsNorm { eps } => {
                rms_norm(ins[0].f32()?, ins[1].f32()?, eps, outs[0].f32_mut()?);
                Ok(())
            }
            Op::Linear => {
                let bias = match ins.get(2) {
                    Some(b) => Some(b.f32()?),
                    None => None,
                };
                let k = dims2(ins[0]).1;
                linear(ins[0].f32()?, k, ins[1].f32()?, bias, outs[0].f32_mut()?);
                Ok(())
            }
            Op::Rope { params, heads } => {
                let out = outs[0].f32_mut()?;
                out.copy_from_slice(ins[0].f32()?);
                let inv_freq = params.inv_freq();
                let width = dims2(ins[0]).1;
                for (row, &p) in out.chunks_exact_mut(width).zip(ins[1].i32()?) {
                    let p = u32::try_from(p).map_err(|_| Error::Input(format!("position {p}")))?;
                    let (cos, sin) = params.cos_sin(&inv_freq, p);
                    for head in row.chunks_exact_mut(width / heads as usize) {
                        gptoss_core::rope::rotate_half_split(head, &cos, &sin);
                    }
                }
                Ok(())
            }
            Op::Attention {
                heads,
                kv_heads,
                head_dim,
                window,
                scale,
            } => {
                let shape = (heads as usize, kv_heads as usize, head_dim as usize);
                attention(ins, outs, shape, window as usize, scale, None)
            }
            Op::PagedAttention {
                heads,
                kv_heads,
                head_dim,
                window,
                scale,
                page_size,
            } => {
                let shape = (heads as usize, kv_heads as usize, head_dim as usize);
                let ps = Some(page_size as usize);
                attention(ins, outs, shape, window as usize, scale, ps)
            }
            Op::GatherRows => {
                let n = ins[0].desc.shape.dims()[1];
                let (x, rows) = (ins[0].f32()?, ins[1].i32()?);
                let out = outs[0].f32_mut()?;
                for (b, &r) in rows.iter().enumerate() {
                    let src = x
                        .get(r as usize * n..(r as usize + 1) * n)
                        .filter(|_| r >= 0);
                    let src = src.ok_or_else(|| Error::Input(format!("row {r} out of range")))?;
                    out[b * n..(b + 1) * n].copy_from_slice(src);
                }
                Ok(())
            }
            Op::TopKSoftmax { k } => {
                let [ids, weights] = outs else {
                    return Err(Error::Graph("topk_softmax has two outputs".into()));
                };
                let (logits, e) = (ins[0].f32()?, dims2(ins[0]).1);
                top_k_softmax(logits, e, k as usize, ids.i32_mut()?, weights.f32_mut()?);
                Ok(())
            }
            Op::MoeMxfp4 {
                swiglu_limit,
                alpha,
            } => moe(ins, outs[0].f32_mut()?, swiglu_limit, alpha),
            Op::Add => {
                let (a, b) = (ins[0].f32()?, ins[1].f32()?);
                for ((o, x), y) in outs[0].f32_mut()?.iter_mut().zip(a).zip(b) {
                    *o = x + y;
                }
                Ok(())
            }
            Op::LastRow => {
                let (x, out) = (ins[0].f32()?, outs[0].f32_mut()?);
                out.copy_from_slice(&x[x.len() - out.len()..]);
                Ok(())
            }
            Op::Argmax => {
                let n = ins[0].desc.shape.dims()[1];
                for (o, row) in outs[0].i32_mut()?.iter_mut().zip(ins[0].f32()?.chunks(n)) {
                    *o = argmax(row) as i32;
                }
                Ok(())
            }
            Op::LocalExperts { .. } | Op::AllReduceSum => Err(Error::Unsupported {
                backend: "example".into(),
                what: format!("op '{}'", op.name()),
            }),
        }
    }
}

/// Dims of a 2-D tensor (the validated graph guarantees the rank).
fn dims2(t: &HostTensor) -> (usize, usize) {
    let d = t.desc.shape.dims();
    (d[0], d[1])
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i; // strictly greater: the first maximum wins ties
        }
    }
    best
}

/// out[t] = table[ids[t]]
fn embed(table: &HostTensor, ids: &[i32], out: &mut [f32]) -> Result<()> {
    let (vocab, hidden) = dims2(table);
    let table = table.f32()?;
    for (row, &id) in out.chunks_exact_mut(hidden).zip(ids) {
        if id < 0 || id as usize >= vocab {
            return Err(Error::Input(format!(
                "token id {id} is outside the vocabulary (0..{vocab})"
            )));
        }
        let id = id as usize;
        row.copy_from_slice(&table[id * hidden..(id + 1) * hidden]);
    }
    Ok(())
}

/// y = w * (x / sqrt(mean(x^2) + eps)), row by row.
fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let h = w.len();
    for (o, x) in out.chunks_exact_mut(h).zip(x.chunks_exact(h)) {
        let inv = 1.0 / (dot(x, x) / h as f32 + eps).sqrt();
        for ((o, x), w) in o.iter_mut().zip(x).zip(w) {
            *o = w * (x * inv);
        }
    }
}

/// y = x W^T + b, with x [T, K] and W stored [N, K].
fn linear(x: &[f32], k: usize, w: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
    let n = w.len() / k;
    for (xr, yr) in x.chunks_exact(k).zip(out.chunks_exact_mut(n)) {
        for (r, y) in yr.iter_mut().enumerate() {
            *y = dot(xr, &w[r * k..(r + 1) * k]) + bias.map_or(0.0, |b| b[r]);
        }
    }
}

/// Attention with sinks over a KV cache: one sequence's contiguous cache (`page_size` None:
/// key j in row j) or a pool of pages shared by several sequences (`PagedAttention`: row t
/// writes its k/v at `slots[t]`, and key j of its sequence sits at
/// `pages[t][j / page_size] * page_size + j % page_size`).
fn attention(
    ins: &[&HostTensor],
    outs: &mut [&mut HostTensor],
    (nq, nkv, d): (usize, usize, usize),
    window: usize,
    scale: f32,
    page_size: Option<usize>,
) -> Result<()> {
    let (q, k, v, sinks, pos) = (
        ins[0].f32()?,
        ins[1].f32()?,
        ins[2].f32()?,
        ins[3].f32()?,
        ins[4].i32()?,
    );
    let paged = match page_size {
        Some(ps) => Some((
            ins[5].i32()?,
            ins[6].i32()?,
            ins[6].desc.shape.dims()[1],
            ps,
        )),
        None => None,
    };
    let [o, k_cache, v_cache] = outs else {
        return Err(Error::Graph("attention has three outputs".into()));
    };
    let kvw = nkv * d;
    let rows = k_cache.desc.shape.dims()[0];
    let (o, k_cache, v_cache) = (o.f32_mut()?, k_cache.f32_mut()?, v_cache.f32_mut()?);
    // The cache row of key position j for row t, checked.
    let row_of = |t: usize, j: usize| -> Result<usize> {
        let r = match paged {
            None => j as i64,
            Some((_, pages, np, ps)) => match pages.get(t * np + j / ps) {
                Some(&pg) if pg >= 0 => pg as i64 * ps as i64 + (j % ps) as i64,
                _ => -1,
            },
        };
        if r < 0 || r as usize >= rows {
            return Err(Error::Input(format!(
                "row {t}: key position {j} is outside the KV cache ({rows} rows)"
            )));
        }
        Ok(r as usize)
    };
    // 1. Write this step's keys and values into their cache rows: their positions, or their
    //    slots in the pool.
    for (t, &p) in pos.iter().enumerate() {
        if p < 0 {
            return Err(Error::Input(format!("negative position {p}")));
        }
        let dst = match paged {
            None => row_of(t, p as usize)?,
            Some((slots, ..)) => match usize::try_from(slots[t]) {
                Ok(s) if s < rows => s,
                _ => return Err(Error::Input(format!("slot {} outside the pool", slots[t]))),
            },
        };
        let (src, dst) = (t * kvw..(t + 1) * kvw, dst * kvw..(dst + 1) * kvw);
        k_cache[dst.clone()].copy_from_slice(&k[src.clone()]);
        v_cache[dst].copy_from_slice(&v[src]);
    }
    // 2. Each query head attends to cached positions first..=p; the sink adds one more logit
    //    to the softmax denominator without a value.
    for (t, &p) in pos.iter().enumerate() {
        let p = p as usize;
        let first = if window == 0 {
            0
        } else {
            (p + 1).saturating_sub(window)
        };
        let key_rows: Vec<usize> = (first..=p).map(|j| row_of(t, j)).collect::<Result<_>>()?;
        for h in 0..nq {
            let qh = &q[(t * nq + h) * d..][..d];
            let kv_off = (h / (nq / nkv)) * d; // grouped-query: heads share kv heads
            let scores: Vec<f32> = key_rows
                .iter()
                .map(|r| dot(qh, &k_cache[r * kvw + kv_off..][..d]) * scale)
                .collect();
            let m = scores.iter().fold(sinks[h], |m, &s| m.max(s));
            let denom = (sinks[h] - m).exp() + scores.iter().map(|s| (s - m).exp()).sum::<f32>();
            let out = &mut o[(t * nq + h) * d..][..d];
            out.fill(0.0);
            for (r, s) in key_rows.iter().zip(&scores) {
                let a = (s - m).exp() / denom;
                for (o, v) in out.iter_mut().zip(&v_cache[r * kvw + kv_off..][..d]) {
                    *o += a * v;
                }
            }
        }
    }
    Ok(())
}

/// Per row: the k largest logits (ties to the lower index) and a softmax over them.
fn top_k_softmax(logits: &[f32], e: usize, k: usize, ids: &mut [i32], weights: &mut [f32]) {
    let rows = logits.chunks_exact(e);
    for ((row, ids), ws) in rows
        .zip(ids.chunks_exact_mut(k))
        .zip(weights.chunks_exact_mut(k))
    {
        let mut order: Vec<usize> = (0..e).collect();
        // A stable sort keeps the lower index first among equal values.
        order.sort_by(|&a, &b| {
            row[b]
                .partial_cmp(&row[a])
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        let max = row[order[0]];
        let exps: Vec<f32> = order[..k].iter().map(|&i| (row[i] - max).exp()).collect();
        let sum: f32 = exps.iter().sum();
        for ((id, w), (&i, x)) in ids.iter_mut().zip(ws).zip(order.iter().zip(&exps)) {
            *id = i as i32;
            *w = x / sum;
        }
    }
}

/// Mixture of MXFP4 experts: for each token and each chosen expert,
/// y = down(swiglu(gate_up(x))) weighted by the router weight; see `Op::MoeMxfp4`.
fn moe(ins: &[&HostTensor], out: &mut [f32], limit: f32, alpha: f32) -> Result<()> {
    let [x, ids, weights, gu_blocks, gu_scales, gu_bias, dn_blocks, dn_scales, dn_bias] = ins
    else {
        return Err(Error::Graph("moe_mxfp4 takes nine inputs".into()));
    };
    let (_, h) = dims2(x);
    let (_, k) = dims2(ids);
    let experts = gu_bias.desc.shape.dims()[0];
    let two_i = gu_bias.desc.shape.dims()[1];
    let i = two_i / 2;
    // One row of an expert's matrix times a vector: decode the row's MXFP4 blocks, then dot.
    // `blocks` holds rows of in/32 blocks of 16 bytes, `scales` rows of in/32 bytes.
    let row_dot = |blocks: &[u8], scales: &[u8], row: usize, v: &[f32]| {
        let groups = v.len() / 32;
        let mut w = vec![0f32; v.len()];
        decode_row(
            &blocks[row * groups * 16..(row + 1) * groups * 16],
            &scales[row * groups..(row + 1) * groups],
            &mut w,
        );
        dot(&w, v)
    };
    let (gub, gus, gub_b) = (gu_blocks.bytes()?, gu_scales.bytes()?, gu_bias.f32()?);
    let (dnb, dns, dnb_b) = (dn_blocks.bytes()?, dn_scales.bytes()?, dn_bias.f32()?);
    out.fill(0.0);
    for (t, xt) in x.f32()?.chunks_exact(h).enumerate() {
        for slot in 0..k {
            let e = ids.i32()?[t * k + slot];
            if e < 0 || e as usize >= experts {
                return Err(Error::Input(format!("expert id {e} (0..{experts})")));
            }
            let (e, w) = (e as usize, weights.f32()?[t * k + slot]);
            // gate_up rows of expert e interleave gate (even) and up (odd).
            let (gb, gs) = (
                &gub[e * two_i * h / 2..][..two_i * h / 2],
                &gus[e * two_i * h / 32..],
            );
            let act: Vec<f32> = (0..i)
                .map(|c| {
                    let gate = row_dot(gb, gs, 2 * c, xt) + gub_b[e * two_i + 2 * c];
                    let up = row_dot(gb, gs, 2 * c + 1, xt) + gub_b[e * two_i + 2 * c + 1];
                    let gate = gate.min(limit);
                    let up = up.clamp(-limit, limit);
                    let glu = gate / (1.0 + (-gate * alpha).exp()); // gate * sigmoid(alpha gate)
                    (up + 1.0) * glu
                })
                .collect();
            let (db, ds) = (&dnb[e * h * i / 2..][..h * i / 2], &dns[e * h * i / 32..]);
            for (r, o) in out[t * h..(t + 1) * h].iter_mut().enumerate() {
                *o += w * (row_dot(db, ds, r, &act) + dnb_b[e * h + r]);
            }
        }
    }
    Ok(())
}

// The one line that makes this crate a plugin: it exports `gptoss_backend_entry`.
gptoss_core::export_backend!(HostExecutor<ExampleKernels>);
