//! Batched steps over a paged KV cache, checked against transformers for any backend (the
//! cpu tests call these; the CUDA tests call them on the GPU).

use gptoss_models::batch::{BatchItem, PagedKv, PagedSeq, PAGE_SIZE};
use gptoss_models::Model;

use crate::{compare_logits, Reference, F32_LOGIT_TOLERANCE};

/// Every prompt of fixture `name` advanced together in one batch per step, each fed a
/// different number of tokens per step (a mix of prefill chunks and single tokens, so rows of
/// several sequences share steps): each sequence's last-row logits at every step must match
/// transformers' logits at that position. Returns the largest difference.
pub fn check_batched_prompts(model: &mut Model, name: &str) -> f32 {
    let v = model.config.vocab_size;
    let prompts = Reference::load(name).prompts();
    let total: usize = prompts.iter().map(|(p, _)| p.len()).sum();
    // Small on purpose: sequences' pages interleave in the pool.
    let mut kv = model.new_paged_kv(total + 64).expect("paged kv");
    let mut seqs: Vec<PagedSeq> = prompts.iter().map(|_| PagedSeq::new()).collect();
    let chunks = [5usize, 1, 3, 1, 7, 1];
    let mut worst = 0f32;
    let mut step = 0;
    loop {
        let mut feeds = Vec::new();
        for (i, (p, _)) in prompts.iter().enumerate() {
            let at = seqs[i].len();
            if at < p.len() {
                let n = chunks[(step + i) % chunks.len()].min(p.len() - at);
                feeds.push((i, at, n));
            }
        }
        if feeds.is_empty() {
            break;
        }
        let mut items: Vec<BatchItem> = Vec::new();
        let mut which = Vec::new();
        for (seq, (i, at, n)) in seqs
            .iter_mut()
            .enumerate()
            .filter_map(|(i, s)| feeds.iter().find(|f| f.0 == i).map(|f| (s, *f)))
        {
            items.push(BatchItem {
                seq,
                tokens: &prompts[i].0[at..at + n],
            });
            which.push((i, at + n - 1));
        }
        let out = model
            .forward_batch(&mut kv, &mut items)
            .expect("batched step");
        for (logits, (i, row)) in out.iter().zip(&which) {
            let want = &prompts[*i].1[row * v..(row + 1) * v];
            let label = format!("{name} batched step {step}: prompt {i} position {row}");
            let d = compare_logits(&label, logits, want, v);
            assert!(d < F32_LOGIT_TOLERANCE, "{label}: max abs diff {d}");
            worst = worst.max(d);
        }
        step += 1;
    }
    eprintln!("{name} batched: {step} steps, max abs diff {worst:.3e}");
    for s in &mut seqs {
        kv.release(s);
    }
    assert_eq!(kv.free_pages(), kv.total_pages(), "every page back");
    model.free_paged_kv(kv).expect("free kv");
    worst
}

/// `n` copies of the fixture's greedy prompt decoded together (staggered starts), each
/// equal to transformers' greedy continuation.
pub fn check_batched_greedy(model: &mut Model, name: &str, n: usize) {
    let r = Reference::load(name);
    let (prompt, want) = (r.tokens("greedy_prompt"), r.tokens("greedy_tokens"));
    let per_seq = PagedKv::pages_for(prompt.len() + want.len()) * PAGE_SIZE;
    let mut kv = model.new_paged_kv(n * per_seq).expect("paged kv");
    let mut seqs: Vec<PagedSeq> = (0..n).map(|_| PagedSeq::new()).collect();
    let mut got: Vec<Vec<u32>> = vec![Vec::new(); n];
    // Sequence i joins at step i: prefill and decodes share steps.
    for step in 0.. {
        let mut feeds: Vec<Vec<u32>> = Vec::new();
        let mut idx = Vec::new();
        for i in 0..n.min(step + 1) {
            if got[i].len() == want.len() {
                continue;
            }
            feeds.push(if seqs[i].is_empty() {
                prompt.clone()
            } else {
                vec![*got[i].last().expect("a token")]
            });
            idx.push(i);
        }
        if feeds.is_empty() {
            break;
        }
        let mut items: Vec<BatchItem> = seqs
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| idx.contains(i))
            .zip(&feeds)
            .map(|((_, seq), tokens)| BatchItem { seq, tokens })
            .collect();
        let next = model
            .forward_batch_argmax(&mut kv, &mut items)
            .expect("batched greedy step");
        for (i, t) in idx.iter().zip(next) {
            got[*i].push(t);
        }
    }
    for (i, g) in got.iter().enumerate() {
        assert_eq!(g, &want, "{name}: batched greedy sequence {i}");
    }
    for s in &mut seqs {
        kv.release(s);
    }
    model.free_paged_kv(kv).expect("free kv");
}
