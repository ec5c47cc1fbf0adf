//! Many sequences in one forward step: a paged KV cache shared by all of them, and batched
//! steps (several decoding sequences and prefill chunks together) over it.
//!
//! Positions of a sequence live on pages of [`PAGE_SIZE`] rows taken from one pool per layer
//! (per shard when the model is split), so memory follows what each sequence really holds.
//! A step's rows carry their sequence's page table; the weights are read once for all rows.

use gptoss_core::{DType, Error, Result, TensorDesc};

use crate::graph_builder::{build_step_into, KvBinding, LogitsWanted, StepIo};
use crate::kv_cache::KvCache;
use crate::model::{f32_from_bytes, i32_bytes, on_every_shard, with_buffers, Model};

/// Positions per page.
pub const PAGE_SIZE: usize = 16;

/// The pools of every layer (on every shard) and which pages are free.
#[derive(Debug)]
pub struct PagedKv {
    /// Per shard, `(k_pool, v_pool)` of every layer, each `[pages * PAGE_SIZE, kv_heads *
    /// head_dim]`.
    pools: Vec<KvCache>,
    free: Vec<u32>,
    pages: usize,
}

/// One sequence's pages and how many positions it holds.
#[derive(Debug, Default)]
pub struct PagedSeq {
    pages: Vec<u32>,
    len: usize,
}

impl PagedSeq {
    pub fn new() -> PagedSeq {
        PagedSeq::default()
    }
    /// Positions already in the context.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl PagedKv {
    /// Pages no sequence holds.
    pub fn free_pages(&self) -> usize {
        self.free.len()
    }
    pub fn total_pages(&self) -> usize {
        self.pages
    }
    /// Pages a sequence of `positions` positions needs.
    pub fn pages_for(positions: usize) -> usize {
        positions.div_ceil(PAGE_SIZE)
    }

    /// Give `seq`'s pages back (the sequence ended or was cancelled).
    pub fn release(&mut self, seq: &mut PagedSeq) {
        self.free.append(&mut seq.pages);
        seq.len = 0;
    }

    /// Make room in `seq` for positions up to `end`; nothing changes when the pool is short.
    fn reserve(&mut self, seq: &mut PagedSeq, end: usize) -> Result<()> {
        let need = Self::pages_for(end).saturating_sub(seq.pages.len());
        if need > self.free.len() {
            return Err(Error::Input(format!(
                "the KV cache is full: {end} positions need {need} more pages of {PAGE_SIZE}, \
                 {} of {} are free; end other sequences or raise the cache size",
                self.free.len(),
                self.pages
            )));
        }
        let at = self.free.len() - need;
        seq.pages.extend(self.free.drain(at..));
        Ok(())
    }

    /// Undo a step's [`reserve`](Self::reserve)s: each item keeps only its first `before`
    /// pages (what it held when the step began).
    fn unreserve(&mut self, items: &mut [BatchItem], before: &[usize]) {
        for (it, &n) in items.iter_mut().zip(before) {
            self.free.extend(it.seq.pages.drain(n..));
        }
    }
}

/// One sequence's part of a batched step: its state and the tokens it feeds now.
pub struct BatchItem<'a> {
    pub seq: &'a mut PagedSeq,
    pub tokens: &'a [u32],
}

impl Model {
    /// Pools with room for `positions` positions in all, shared by the sequences of
    /// [`Model::forward_batch`].
    pub fn new_paged_kv(&mut self, positions: usize) -> Result<PagedKv> {
        let pages = PagedKv::pages_for(positions).max(1);
        Ok(PagedKv {
            pools: self.alloc_caches(pages * PAGE_SIZE)?,
            free: (0..pages as u32).rev().collect(),
            pages,
        })
    }

    pub fn free_paged_kv(&mut self, kv: PagedKv) -> Result<()> {
        self.free_caches(kv.pools)
    }

    /// One step over several sequences: each item's tokens follow what its sequence holds.
    /// Returns the logits of each item's last token (`[V]` each). On error no sequence
    /// changes. (The raw result, little-endian, is converted once, row by row.)
    pub fn forward_batch(
        &mut self,
        kv: &mut PagedKv,
        items: &mut [BatchItem],
    ) -> Result<Vec<Vec<f32>>> {
        let v = self.config.vocab_size;
        let bytes = self.batch_step(kv, items, LogitsWanted::Last)?;
        Ok(bytes.chunks(v * 4).map(f32_from_bytes).collect())
    }

    /// [`Model::forward_batch`] returning each item's greedy next token, computed on the
    /// backend (one id per sequence comes back).
    pub fn forward_batch_argmax(
        &mut self,
        kv: &mut PagedKv,
        items: &mut [BatchItem],
    ) -> Result<Vec<u32>> {
        let out = self.batch_step(kv, items, LogitsWanted::Argmax)?;
        Ok(out
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    fn batch_step(
        &mut self,
        kv: &mut PagedKv,
        items: &mut [BatchItem],
        wanted: LogitsWanted,
    ) -> Result<Vec<u8>> {
        let v = self.config.vocab_size;
        if items.is_empty() {
            return Err(Error::Input("an empty batch".into()));
        }
        let max_ctx = self.config.max_position_embeddings;
        for (n, it) in items.iter().enumerate() {
            if it.tokens.is_empty() {
                return Err(Error::Input(format!("batch item {n} has no tokens")));
            }
            if let Some(t) = it.tokens.iter().find(|t| **t as usize >= v) {
                return Err(Error::Input(format!(
                    "batch item {n}: token id {t} is out of range: this model's vocab_size is {v}"
                )));
            }
            let end = it.seq.len + it.tokens.len();
            if end > max_ctx {
                return Err(Error::Input(format!(
                    "batch item {n}: {end} positions exceed the model's context of {max_ctx}"
                )));
            }
        }
        // Pages first (all or nothing), so a full cache fails before any state changes.
        let before: Vec<usize> = items.iter().map(|it| it.seq.pages.len()).collect();
        for i in 0..items.len() {
            let end = items[i].seq.len + items[i].tokens.len();
            if let Err(e) = kv.reserve(items[i].seq, end) {
                kv.unreserve(items, &before);
                return Err(e);
            }
        }
        let t: usize = items.iter().map(|it| it.tokens.len()).sum();
        let max_pages = items.iter().map(|it| it.seq.pages.len()).max().unwrap_or(1);
        let (mut ids, mut pos, mut slots, mut table, mut last) = (
            Vec::with_capacity(t),
            Vec::with_capacity(t),
            Vec::with_capacity(t),
            Vec::new(),
            Vec::new(),
        );
        for it in items.iter() {
            let mut row: Vec<i32> = it.seq.pages.iter().map(|p| *p as i32).collect();
            row.resize(max_pages, -1);
            for (k, tok) in it.tokens.iter().enumerate() {
                let p = it.seq.len + k;
                ids.push(*tok as i32);
                pos.push(p as i32);
                slots.push(
                    (it.seq.pages[p / PAGE_SIZE] as usize * PAGE_SIZE + p % PAGE_SIZE) as i32,
                );
                table.extend_from_slice(&row);
            }
            last.push(ids.len() as i32 - 1);
        }
        let b = items.len();
        let out_desc = if wanted == LogitsWanted::Argmax {
            TensorDesc::new(DType::I32, [b])
        } else {
            TensorDesc::new(DType::F32, [b, v])
        };
        let inputs = [
            (TensorDesc::new(DType::I32, [t]), i32_bytes(ids)),
            (TensorDesc::new(DType::I32, [t]), i32_bytes(pos)),
            (TensorDesc::new(DType::I32, [t]), i32_bytes(slots)),
            (
                TensorDesc::new(DType::I32, [t, max_pages]),
                i32_bytes(table),
            ),
            (TensorDesc::new(DType::I32, [b]), i32_bytes(last)),
            (out_desc, Vec::new()),
        ];
        let rows = kv.pages * PAGE_SIZE;
        let config = &self.config;
        let pools = &kv.pools;
        let out = on_every_shard(&mut self.shards, |rank, sh| {
            let (plan, weights, graph) = (&sh.plan, &sh.weights, &mut sh.batch_graph);
            with_buffers(sh.backend.as_mut(), &inputs, |be, bufs| {
                let io = StepIo {
                    ids: bufs[0],
                    positions: bufs[1],
                    logits: bufs[5],
                    gather: Some((bufs[4], b)),
                };
                let binding = KvBinding::Paged {
                    layers: &pools[rank].layers,
                    rows,
                    page_size: PAGE_SIZE,
                    slots: bufs[2],
                    pages: bufs[3],
                    max_pages,
                };
                build_step_into(graph, config, plan, weights, &binding, t, io, wanted);
                be.execute(graph)?;
                if rank != 0 {
                    return Ok(Vec::new());
                }
                be.download(bufs[5])
            })
        });
        match out {
            Ok(out) => {
                for it in items.iter_mut() {
                    it.seq.len += it.tokens.len();
                }
                Ok(out)
            }
            Err(e) => {
                kv.unreserve(items, &before);
                Err(e)
            }
        }
    }
}
