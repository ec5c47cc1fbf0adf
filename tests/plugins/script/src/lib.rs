//! Test backend "script": the model emits a fixed token script whatever its input, so the
//! server's harmony mapping (reasoning, tool calls, answers) can be tested end to end without a
//! trained model.
//!
//! Every kernel leaves its outputs at zero, except LastRow and Argmax (real), and the Linear
//! whose output width is the o200k_harmony vocabulary (201088, the lm_head): its rows are
//! one-hot (value 100) at the next scripted token. The script is `$GPTOSS_SCRIPT`: comma-separated token ids, read when
//! the backend is created.
//!
//! Which script step comes next is tracked per sequence. A sequence is identified by its
//! layer-0 KV-cache buffer (the heap address of the Attention op's k_cache output, stable
//! while the buffer lives; every request has its own cache). The rule: a graph of ONE token,
//! whose token is the one this plugin emitted last for that cache, at the position right after
//! the previous graph's last position, is a decode step and gets the next scripted token; any
//! other graph (a prefill chunk, a new sequence reusing a freed cache's address) starts the
//! script again and gets script[0]. A prompt always ends with `<|start|>assistant`, so a
//! one-token final prefill chunk never looks like a decode step. Past the end of the script
//! the last token repeats.
//!
//! A batched step (`PagedAttention` over a shared pool, `GatherRows` picking each sequence's
//! last row) holds several sequences: each is the run of rows up to its gathered row, known
//! by the first page of its page table (held by that sequence alone while it lives), and gets
//! its own next token by the same rule.

use std::collections::HashMap;
use std::sync::Mutex;

use gptoss_core::host::{HostData, HostExecutor, HostKernel, HostKernels, HostTensor};
use gptoss_core::plugin::{HostPlugin, PluginOptions};
use gptoss_core::{DeviceReport, Error, Op, ProbeReport, Result};

/// The lm_head's width: the o200k_harmony vocabulary.
const VOCAB: usize = 201088;

#[derive(Default)]
struct Seq {
    /// Scripted tokens emitted so far.
    emitted: usize,
    last_token: u32,
    last_pos: i32,
}

#[derive(Default)]
struct Current {
    ids: Vec<i32>,
    positions: Vec<i32>,
    cache: Option<usize>,
    /// A batched step: each row's page table (`[T, width]`), and each sequence's last row.
    pages: Option<(Vec<i32>, usize)>,
    rows: Vec<i32>,
}

/// Keys of paged sequences (first page), apart from cache addresses.
const PAGED: usize = 1 << 62;

pub struct Kernels {
    script: Vec<u32>,
    current: Mutex<Current>,
    seqs: Mutex<HashMap<usize, Seq>>,
}

fn zero(t: &mut HostTensor) {
    match &mut t.data {
        HostData::F32(v) => v.fill(0.0),
        HostData::I32(v) => v.fill(0),
        HostData::Bytes(v) => v.fill(0),
    }
}

impl Kernels {
    /// The next token of each sequence of the step (one per lm_head row).
    fn next_tokens(&self, rows: usize) -> Result<Vec<u32>> {
        let cur = self
            .current
            .lock()
            .map_err(|_| Error::Input("poisoned".into()))?;
        let mut seqs = self
            .seqs
            .lock()
            .map_err(|_| Error::Input("poisoned".into()))?;
        let Some((pages, width)) = &cur.pages else {
            let key = cur.cache.unwrap_or(0);
            let tok = self.next_token(&mut seqs, key, &cur.ids, &cur.positions);
            return Ok(vec![tok; rows]);
        };
        let mut out = Vec::with_capacity(rows);
        let mut start = 0;
        for &last in &cur.rows {
            let last = last.max(0) as usize;
            let end = (last + 1).min(cur.ids.len()).max(start);
            let key = PAGED | pages.get(last * width).copied().unwrap_or(0) as usize;
            let (ids, pos) = (&cur.ids[start..end], &cur.positions[start..end]);
            out.push(self.next_token(&mut seqs, key, ids, pos));
            start = end;
        }
        out.resize(rows, *out.last().unwrap_or(&self.script[0]));
        Ok(out)
    }

    fn next_token(
        &self,
        seqs: &mut HashMap<usize, Seq>,
        key: usize,
        ids: &[i32],
        positions: &[i32],
    ) -> u32 {
        let seq = seqs.entry(key).or_default();
        let first = positions.first().copied().unwrap_or(0);
        let last = positions.last().copied().unwrap_or(0);
        let decode = ids.len() == 1
            && seq.emitted > 0
            && ids[0] as u32 == seq.last_token
            && first == seq.last_pos + 1;
        if !decode {
            seq.emitted = 0;
        }
        let i = seq.emitted.min(self.script.len() - 1);
        let tok = self.script[i];
        seq.emitted += 1;
        seq.last_token = tok;
        seq.last_pos = last;
        tok
    }
}

impl HostKernel for Kernels {
    fn run(&self, op: &Op, ins: &[&HostTensor], outs: &mut [&mut HostTensor]) -> Result<()> {
        let poisoned = |_| Error::Input("script plugin state poisoned".into());
        match op {
            Op::Embed => {
                let mut cur = self.current.lock().map_err(poisoned)?;
                cur.ids = ins[1].i32()?.to_vec();
                cur.positions.clear();
                cur.cache = None;
                cur.pages = None;
                cur.rows.clear();
            }
            Op::PagedAttention { .. } => {
                let mut cur = self.current.lock().map_err(poisoned)?;
                if cur.pages.is_none() {
                    cur.positions = ins[4].i32()?.to_vec();
                    let width = ins[6].desc.shape.dims().last().copied().unwrap_or(1);
                    cur.pages = Some((ins[6].i32()?.to_vec(), width));
                }
            }
            Op::GatherRows => {
                let mut cur = self.current.lock().map_err(poisoned)?;
                cur.rows = ins[1].i32()?.to_vec();
            }
            Op::Attention { .. } => {
                let mut cur = self.current.lock().map_err(poisoned)?;
                if cur.cache.is_none() {
                    cur.positions = ins[4].i32()?.to_vec();
                    cur.cache = Some(outs[1].f32()?.as_ptr() as usize);
                }
            }
            _ => {}
        }
        for o in outs.iter_mut() {
            if !matches!(op, Op::Attention { .. } | Op::PagedAttention { .. }) {
                zero(o);
            }
        }
        match op {
            // Kept real so the script survives whatever follows the lm_head.
            Op::LastRow => {
                let (x, out) = (ins[0].f32()?, outs[0].f32_mut()?);
                out.copy_from_slice(&x[x.len() - out.len()..]);
            }
            Op::Argmax => {
                let x = ins[0].f32()?;
                let out = outs[0].i32_mut()?;
                let n = x.len() / out.len().max(1);
                for (row, o) in x.chunks_exact(n).zip(out.iter_mut()) {
                    let mut best = 0;
                    for (i, v) in row.iter().enumerate() {
                        if *v > row[best] {
                            best = i;
                        }
                    }
                    *o = best as i32;
                }
            }
            _ => {}
        }
        if matches!(op, Op::Linear) {
            let out = &mut outs[0];
            let width = out.desc.shape.dims().last().copied().unwrap_or(0);
            if width == VOCAB {
                let v = out.f32_mut()?;
                let toks = self.next_tokens(v.len() / VOCAB)?;
                for (row, tok) in v.chunks_exact_mut(VOCAB).zip(toks) {
                    row[tok as usize] = 100.0;
                }
            }
        }
        Ok(())
    }
}

impl HostKernels for Kernels {
    fn kernel(&self, _: &Op) -> Option<&dyn HostKernel> {
        Some(self as &dyn HostKernel)
    }
    fn probe(&self) -> ProbeReport {
        Self::probe_devices()
    }
}

impl HostPlugin for Kernels {
    const NAME: &'static str = "script";
    const VERSION: &'static str = "0.0.1";
    fn probe_devices() -> ProbeReport {
        ProbeReport {
            devices: vec![DeviceReport {
                name: "host".into(),
                score: 1,
                reason: "test plugin: emits $GPTOSS_SCRIPT".into(),
                ..Default::default()
            }],
        }
    }
    fn create(_: &PluginOptions) -> Result<Self> {
        let text = std::env::var("GPTOSS_SCRIPT")
            .map_err(|_| Error::Input("script backend: set GPTOSS_SCRIPT to token ids".into()))?;
        let script: std::result::Result<Vec<u32>, _> = text
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::parse::<u32>)
            .collect();
        let script = script
            .map_err(|e| Error::Input(format!("GPTOSS_SCRIPT: not token ids ({e}): {text}")))?;
        if script.is_empty() || script.iter().any(|&t| t as usize >= VOCAB) {
            return Err(Error::Input(format!(
                "GPTOSS_SCRIPT: give at least one token id below {VOCAB}"
            )));
        }
        Ok(Kernels {
            script,
            current: Mutex::new(Current::default()),
            seqs: Mutex::new(HashMap::new()),
        })
    }
}

gptoss_core::export_backend!(HostExecutor<Kernels>);
