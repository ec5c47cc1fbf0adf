//! Choosing the next token from logits: penalties, temperature, top-k, top-p, min-p, and a
//! seeded PRNG (same seed and inputs → same tokens). Stop strings: [`StopStrings`].
//!
//! Order (as Hugging Face's processors): repetition, frequency and presence penalties;
//! temperature 0 → greedy argmax; else temperature, top-k, top-p, min-p, then a draw.

mod rng;
mod stop;

use gptoss_core::{Error, Result};
use serde::{Deserialize, Serialize};

pub use rng::Rng;
pub use stop::{StopCheck, StopStrings};

/// Sampling settings. Defaults follow OpenAI's recommendation for gpt-oss (temperature 1.0,
/// top_p 1.0) with every filter and penalty off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// 0 = greedy (argmax).
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 = off.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches top_p; 1 = off.
    pub top_p: f32,
    /// Drop tokens less likely than min_p × the most likely one; 0 = off.
    pub min_p: f32,
    /// OpenAI: logit −= frequency_penalty × (times the token occurred in the history).
    pub frequency_penalty: f32,
    /// OpenAI: logit −= presence_penalty if the token occurred in the history.
    pub presence_penalty: f32,
    /// CTRL/HF: a seen token's logit is divided by this if positive, multiplied if not; 1 = off.
    pub repetition_penalty: f32,
    /// Seed of the draw; None = a fresh random seed.
    pub seed: Option<u64>,
    /// Most tokens to generate (the generation loop enforces it); None = until the context ends.
    pub max_tokens: Option<usize>,
    /// Stop strings (see [`StopStrings`]).
    pub stop: Vec<String>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            repetition_penalty: 1.0,
            seed: None,
            max_tokens: None,
            stop: Vec::new(),
        }
    }
}

impl SamplingParams {
    /// Greedy decoding (temperature 0).
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            ..Default::default()
        }
    }

    /// Checks every value; the error names the setting and its allowed range.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str, v: f32, range: &str| {
            Err(Error::Input(format!(
                "sampling: {what} must be {range}, got {v}"
            )))
        };
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return bad(
                "temperature",
                self.temperature,
                "a finite number >= 0 (0 = greedy)",
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", self.top_p, "in (0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", self.min_p, "in [0, 1]");
        }
        if !self.repetition_penalty.is_finite() || self.repetition_penalty <= 0.0 {
            return bad(
                "repetition_penalty",
                self.repetition_penalty,
                "a finite number > 0 (1 = off)",
            );
        }
        if !self.frequency_penalty.is_finite() {
            return bad("frequency_penalty", self.frequency_penalty, "finite");
        }
        if !self.presence_penalty.is_finite() {
            return bad("presence_penalty", self.presence_penalty, "finite");
        }
        if self.max_tokens == Some(0) {
            return Err(Error::Input(
                "sampling: max_tokens must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Picks tokens according to [`SamplingParams`].
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    seed: u64,
}

impl Sampler {
    /// Validates `params` and seeds the generator (`params.seed`, or a random seed).
    pub fn new(params: SamplingParams) -> Result<Sampler> {
        params.validate()?;
        let seed = params.seed.unwrap_or_else(Rng::entropy_seed);
        Ok(Sampler {
            rng: Rng::seeded(seed),
            seed,
            params,
        })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The seed in use (to reproduce an unseeded run).
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The next token. `logits` (one per vocabulary id) is modified in place by the
    /// penalties; `history` holds the tokens the penalties look at (ids beyond the logits are
    /// ignored). NaN logits are never chosen unless every logit is NaN (then id 0).
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        apply_penalties(&self.params, logits, history);
        if self.params.temperature == 0.0 {
            return argmax(logits);
        }
        let p = &self.params;
        // (id, weight): weight = exp((logit - max) / T), so the most likely token has 1.
        let max = logits
            .iter()
            .copied()
            .filter(|l| !l.is_nan())
            .fold(f32::NEG_INFINITY, f32::max);
        if max == f32::INFINITY || max == f32::NEG_INFINITY {
            // A +inf logit wins outright; all -inf/NaN leaves nothing to draw from.
            return argmax(logits);
        }
        let mut cand: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.is_nan() && **l != f32::NEG_INFINITY)
            .map(|(i, &l)| (i as u32, (((l - max) / p.temperature) as f64).exp()))
            .collect();
        if p.top_k > 0 && p.top_k < cand.len() {
            cand.select_nth_unstable_by(p.top_k - 1, by_weight_desc);
            cand.truncate(p.top_k);
        }
        if p.top_p < 1.0 || p.min_p > 0.0 {
            let total: f64 = cand.iter().map(|c| c.1).sum();
            if p.min_p > 0.0 {
                // Relative to the most likely token (weight 1); it always stays.
                cand.retain(|c| c.1 >= p.min_p as f64);
            }
            if p.top_p < 1.0 {
                truncate_to_mass(&mut cand, p.top_p as f64 * total);
            }
        }
        let total: f64 = cand.iter().map(|c| c.1).sum();
        let mut r = self.rng.next_f64() * total;
        for c in &cand {
            r -= c.1;
            if r < 0.0 {
                return c.0;
            }
        }
        cand.last().map_or_else(|| argmax(logits), |c| c.0)
    }
}

fn by_weight_desc(a: &(u32, f64), b: &(u32, f64)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Keeps the smallest set of heaviest candidates whose weights reach `mass` (all of them if
/// they never do). Only a growing head is sorted, not the whole vocabulary.
fn truncate_to_mass(cand: &mut Vec<(u32, f64)>, mass: f64) {
    let mut head = 64;
    loop {
        let whole = head >= cand.len();
        if whole {
            cand.sort_unstable_by(by_weight_desc);
        } else {
            cand.select_nth_unstable_by(head - 1, by_weight_desc);
            cand[..head].sort_unstable_by(by_weight_desc);
        }
        let n = head.min(cand.len());
        let mut acc = 0.0;
        if let Some(i) = cand[..n].iter().position(|c| {
            acc += c.1;
            acc >= mass
        }) {
            cand.truncate(i + 1);
            return;
        }
        if whole {
            return;
        }
        head *= 8;
    }
}

/// Index of the largest logit (lowest index on ties, NaN skipped; 0 if none).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best: Option<(usize, f32)> = None;
    for (i, &l) in logits.iter().enumerate() {
        match best {
            _ if l.is_nan() => {}
            Some((_, b)) if l <= b => {}
            _ => best = Some((i, l)),
        }
    }
    best.map_or(0, |(i, _)| i as u32)
}

fn apply_penalties(p: &SamplingParams, logits: &mut [f32], history: &[u32]) {
    if p.repetition_penalty == 1.0 && p.frequency_penalty == 0.0 && p.presence_penalty == 0.0 {
        return;
    }
    let mut ids: Vec<u32> = history
        .iter()
        .copied()
        .filter(|&id| (id as usize) < logits.len())
        .collect();
    ids.sort_unstable();
    for run in ids.chunk_by(|a, b| a == b) {
        let l = &mut logits[run[0] as usize];
        if p.repetition_penalty != 1.0 {
            *l = if *l > 0.0 {
                *l / p.repetition_penalty
            } else {
                *l * p.repetition_penalty
            };
        }
        *l -= p.frequency_penalty * run.len() as f32 + p.presence_penalty;
    }
}

#[cfg(test)]
mod tests;
