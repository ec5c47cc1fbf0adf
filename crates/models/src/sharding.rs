//! Splitting one model over several backends: which heads, experts and expert columns each
//! shard holds, and how each published tensor is cut for it.
//!
//! Attention is split by heads (tensor parallel): shard r holds a contiguous run of KV heads
//! and the query heads that read them, the matching rows of q/k/v and columns of o_proj; the
//! partial o_proj outputs are summed across shards. The experts are split either by their
//! intermediate dimension (tensor parallel, whole MXFP4 blocks of 32 columns; uneven splits
//! allowed) or by expert (expert parallel: shard r holds E/N whole experts, the router stays
//! whole and picks among all of them). Biases that would be counted N times are held by shard
//! 0 only. Embedding, norms, router and lm_head are replicated.

use std::borrow::Cow;
use std::ops::Range;

use gptoss_core::{Error, Result};

use crate::config::GptOssConfig;

/// How a model is split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sharding {
    /// Number of shards (GPUs); 1 = not split.
    pub world: usize,
    /// Split the experts by expert instead of by their intermediate dimension.
    pub expert_parallel: bool,
}

impl Sharding {
    pub const NONE: Sharding = Sharding {
        world: 1,
        expert_parallel: false,
    };

    /// The plan of every rank; refuses splits the model's shape does not allow.
    pub fn plans(&self, cfg: &GptOssConfig) -> Result<Vec<ShardPlan>> {
        (0..self.world.max(1))
            .map(|r| ShardPlan::new(cfg, *self, r))
            .collect()
    }
}

/// What one shard holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardPlan {
    pub rank: usize,
    pub world: usize,
    pub expert_parallel: bool,
    /// Query heads held.
    pub heads: Range<usize>,
    /// Key/value heads held.
    pub kv_heads: Range<usize>,
    /// Experts held (all of them unless expert parallel).
    pub experts: Range<usize>,
    /// MXFP4 blocks (32 columns each) of the experts' intermediate dimension held.
    pub inter_blocks: Range<usize>,
}

/// Even split of `n` items into `world` runs; run `r`.
fn run_of(n: usize, world: usize, r: usize) -> Range<usize> {
    r * n / world..(r + 1) * n / world
}

impl ShardPlan {
    /// The whole model on one backend.
    pub fn whole(cfg: &GptOssConfig) -> ShardPlan {
        ShardPlan::new(cfg, Sharding::NONE, 0).expect("one shard always fits")
    }

    pub fn new(cfg: &GptOssConfig, s: Sharding, rank: usize) -> Result<ShardPlan> {
        let world = s.world.max(1);
        let (nq, nkv, e) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.num_local_experts,
        );
        let blocks = cfg.intermediate_size / 32;
        if nkv % world != 0 {
            return Err(Error::Input(format!(
                "{world} shards: the model's {nkv} key/value heads do not split evenly; \
                 use a tensor-parallel size that divides {nkv}"
            )));
        }
        if s.expert_parallel && e % world != 0 {
            return Err(Error::Input(format!(
                "{world} shards: the model's {e} experts do not split evenly over them; \
                 use an expert-parallel size that divides {e}"
            )));
        }
        if !s.expert_parallel && blocks < world {
            return Err(Error::Input(format!(
                "{world} shards: the experts' intermediate size {} has only {blocks} blocks of \
                 32 columns to split; use --expert-parallel or fewer shards",
                cfg.intermediate_size
            )));
        }
        let kv_heads = run_of(nkv, world, rank);
        let group = nq / nkv;
        Ok(ShardPlan {
            rank,
            world,
            expert_parallel: s.expert_parallel,
            heads: kv_heads.start * group..kv_heads.end * group,
            kv_heads,
            experts: if s.expert_parallel {
                run_of(e, world, rank)
            } else {
                0..e
            },
            inter_blocks: if s.expert_parallel {
                0..blocks
            } else {
                run_of(blocks, world, rank)
            },
        })
    }

    pub fn is_whole(&self) -> bool {
        self.world == 1
    }

    /// Columns of the experts' intermediate dimension held.
    pub fn intermediate(&self) -> usize {
        self.inter_blocks.len() * 32
    }
}

/// How a shard's tensor is cut from the published one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cut {
    Whole,
    /// `len` indices from `start` along axis `dim`.
    Slice {
        dim: usize,
        start: usize,
        len: usize,
    },
    /// Zeros of the full shape (a bias another shard adds).
    Zero,
}

impl Cut {
    /// The shape after cutting `full`.
    pub fn shape(&self, full: &[usize]) -> Vec<usize> {
        let mut s = full.to_vec();
        if let Cut::Slice { dim, len, .. } = *self {
            s[dim] = len;
        }
        s
    }

    /// Cut the row-major bytes of a tensor of shape `full` with `elem` bytes per element.
    /// A slice along the first axis borrows; other cuts copy.
    pub fn apply<'a>(&self, full: &[usize], elem: usize, bytes: &'a [u8]) -> Cow<'a, [u8]> {
        match *self {
            Cut::Whole => Cow::Borrowed(bytes),
            Cut::Zero => Cow::Owned(vec![0; bytes.len()]),
            Cut::Slice { dim, start, len } => {
                let outer: usize = full[..dim].iter().product();
                let inner: usize = full[dim + 1..].iter().product::<usize>() * elem;
                let (row, take, from) = (full[dim] * inner, len * inner, start * inner);
                if outer == 1 {
                    return Cow::Borrowed(&bytes[from..from + take]);
                }
                let mut out = Vec::with_capacity(outer * take);
                for o in 0..outer {
                    out.extend_from_slice(&bytes[o * row + from..o * row + from + take]);
                }
                Cow::Owned(out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::Preset;

    #[test]
    fn slices_along_each_axis() {
        // [2, 3, 2] of bytes 0..12
        let b: Vec<u8> = (0..12).collect();
        let full = [2, 3, 2];
        let c = Cut::Slice {
            dim: 0,
            start: 1,
            len: 1,
        };
        assert!(matches!(c.apply(&full, 1, &b), Cow::Borrowed(_)));
        assert_eq!(&*c.apply(&full, 1, &b), &[6, 7, 8, 9, 10, 11]);
        let c = Cut::Slice {
            dim: 1,
            start: 1,
            len: 2,
        };
        assert_eq!(c.shape(&full), vec![2, 2, 2]);
        assert_eq!(&*c.apply(&full, 1, &b), &[2, 3, 4, 5, 8, 9, 10, 11]);
        let c = Cut::Slice {
            dim: 2,
            start: 1,
            len: 1,
        };
        assert_eq!(&*c.apply(&full, 1, &b), &[1, 3, 5, 7, 9, 11]);
        // two-byte elements
        let c = Cut::Slice {
            dim: 1,
            start: 2,
            len: 1,
        };
        assert_eq!(&*c.apply(&[1, 3], 2, &[0, 1, 2, 3, 4, 5]), &[4, 5]);
        assert_eq!(&*Cut::Zero.apply(&full, 1, &b), &[0u8; 12][..]);
    }

    #[test]
    fn plans_cover_every_head_expert_and_block_once() {
        let cfg = Preset::Gpt20b.config(Some(2));
        for ep in [false, true] {
            let plans = Sharding {
                world: 4,
                expert_parallel: ep,
            }
            .plans(&cfg)
            .unwrap();
            let heads: Vec<usize> = plans.iter().flat_map(|p| p.heads.clone()).collect();
            assert_eq!(heads, (0..64).collect::<Vec<_>>());
            assert!(plans
                .iter()
                .all(|p| p.heads.len() == 16 && p.kv_heads.len() == 2));
            // each q head's kv head is held by the same shard (GQA groups of 8)
            assert!(plans.iter().all(
                |p| p.heads.start / 8 == p.kv_heads.start && p.heads.end / 8 == p.kv_heads.end
            ));
            if ep {
                let ex: Vec<usize> = plans.iter().flat_map(|p| p.experts.clone()).collect();
                assert_eq!(ex, (0..32).collect::<Vec<_>>());
                assert!(plans.iter().all(|p| p.inter_blocks == (0..90)));
            } else {
                let bl: Vec<usize> = plans.iter().flat_map(|p| p.inter_blocks.clone()).collect();
                assert_eq!(bl, (0..90).collect::<Vec<_>>());
                assert!(plans.iter().all(|p| p.experts == (0..32)));
            }
        }
    }

    #[test]
    fn impossible_splits_say_why() {
        let cfg = Preset::Gpt20b.config(Some(2));
        let err = Sharding {
            world: 3,
            expert_parallel: false,
        }
        .plans(&cfg)
        .unwrap_err()
        .to_string();
        assert!(err.contains("8 key/value heads"), "{err}");
        let err = ShardPlan::new(
            &Preset::Tiny.config(None),
            Sharding {
                world: 16,
                expert_parallel: true,
            },
            0,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("key/value heads") || err.contains("experts"),
            "{err}"
        );
    }
}
