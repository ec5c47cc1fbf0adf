//! Rotary position embedding tables, including YaRN as gpt-oss configures it.
//!
//! Every backend must use these exact f32 formulas (transformers' `_compute_yarn_parameters`):
//! the tables are where an otherwise correct backend most easily drifts.

/// YaRN context extension parameters (`rope_scaling` in config.json).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Yarn {
    pub factor: f32,
    pub beta_fast: f32,
    pub beta_slow: f32,
    pub original_max_position_embeddings: u32,
    /// gpt-oss sets `truncate: false`: the correction range is not floored/ceiled.
    pub truncate: bool,
    /// Explicit `attention_factor`; when absent it is `0.1 ln(factor) + 1`.
    pub attention_factor: Option<f32>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeParams {
    pub head_dim: u32,
    pub theta: f32,
    pub yarn: Option<Yarn>,
}

impl RopeParams {
    /// Inverse frequencies, `head_dim / 2` of them, computed in f32 as transformers does.
    pub fn inv_freq(&self) -> Vec<f32> {
        let d = self.head_dim as usize;
        let half = d / 2;
        // pos_freqs = base ** (arange(0, d, 2) / d), all f32
        let pos_freq: Vec<f32> = (0..half)
            .map(|i| self.theta.powf((2 * i) as f32 / d as f32))
            .collect();
        let Some(y) = self.yarn else {
            return pos_freq.iter().map(|p| 1.0 / p).collect();
        };
        let (low, high) = self.correction_range(&y);
        pos_freq
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let extrap = 1.0 / p;
                let interp = 1.0 / (y.factor * p);
                let ramp = ((i as f32 - low) / (high - low)).clamp(0.0, 1.0);
                let keep = 1.0 - ramp;
                interp * (1.0 - keep) + extrap * keep
            })
            .collect()
    }

    /// YaRN's (low, high) dimension range, in f64 as Python computes it, then used as f32.
    fn correction_range(&self, y: &Yarn) -> (f32, f32) {
        let d = self.head_dim as f64;
        let base = self.theta as f64;
        let orig = y.original_max_position_embeddings as f64;
        let dim =
            |n_rot: f64| d * (orig / (n_rot * 2.0 * std::f64::consts::PI)).ln() / (2.0 * base.ln());
        let (mut low, mut high) = (dim(y.beta_fast as f64), dim(y.beta_slow as f64));
        if y.truncate {
            low = low.floor();
            high = high.ceil();
        }
        low = low.max(0.0);
        high = high.min(d - 1.0);
        if low == high {
            high += 0.001; // transformers avoids a division by zero this way
        }
        (low as f32, high as f32)
    }

    /// The factor both cos and sin are multiplied by (YaRN's mscale; 1 without YaRN).
    pub fn attention_scaling(&self) -> f32 {
        match self.yarn {
            None => 1.0,
            Some(y) => y.attention_factor.unwrap_or_else(|| {
                let f = y.factor as f64;
                (if f <= 1.0 { 1.0 } else { 0.1 * f.ln() + 1.0 }) as f32
            }),
        }
    }

    /// cos and sin tables for one position (`head_dim / 2` each), already scaled.
    pub fn cos_sin(&self, inv_freq: &[f32], position: u32) -> (Vec<f32>, Vec<f32>) {
        let m = self.attention_scaling();
        let p = position as f32;
        inv_freq
            .iter()
            .map(|f| {
                let a = p * f;
                (a.cos() * m, a.sin() * m)
            })
            .unzip()
    }
}

/// Rotate one head in place with the half-split pairing (dim i with dim i + d/2).
pub fn rotate_half_split(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = x.len() / 2;
    for i in 0..half {
        let (a, b) = (x[i], x[i + half]);
        x[i] = a * cos[i] - b * sin[i];
        x[i + half] = b * cos[i] + a * sin[i];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpt_oss() -> RopeParams {
        RopeParams {
            head_dim: 64,
            theta: 150000.0,
            yarn: Some(Yarn {
                factor: 32.0,
                beta_fast: 32.0,
                beta_slow: 1.0,
                original_max_position_embeddings: 4096,
                truncate: false,
                attention_factor: None,
            }),
        }
    }

    #[test]
    fn yarn_inv_freq_matches_the_spec_table() {
        // GPTOSS-SPEC.md 5.5, float64 evaluation; f32 agrees to ~1e-6 relative.
        let expected: [(usize, f64); 8] = [
            (0, 1.0),
            (8, 5.081327482e-02),
            (9, 3.170569618e-02),
            (12, 6.794959490e-03),
            (17, 1.293187012e-04),
            (18, 3.830881237e-05),
            (24, 4.099978482e-06),
            (31, 3.023511428e-07),
        ];
        let f = gpt_oss().inv_freq();
        assert_eq!(f.len(), 32);
        for (i, want) in expected {
            let rel = ((f[i] as f64 - want) / want).abs();
            assert!(
                rel < 2e-6,
                "inv_freq[{i}] = {} want {want} (rel {rel:e})",
                f[i]
            );
        }
    }

    #[test]
    fn correction_range_is_not_truncated() {
        let p = gpt_oss();
        let (low, high) = p.correction_range(&p.yarn.unwrap());
        assert!((low - 8.092779).abs() < 1e-5, "{low}");
        assert!((high - 17.398024).abs() < 1e-5, "{high}");
        let mut t = p.yarn.unwrap();
        t.truncate = true;
        assert_eq!(p.correction_range(&t), (8.0, 18.0));
    }

    #[test]
    fn mscale_and_bf16_table_samples() {
        let p = gpt_oss();
        assert!((p.attention_scaling() - 1.3465736).abs() < 1e-7);
        let f = p.inv_freq();
        let (c, s) = p.cos_sin(&f, 1);
        let bf = |x: f32| crate::bf16::to_f32(crate::bf16::from_f32(x));
        assert_eq!(
            [bf(c[0]), bf(c[1]), bf(c[2]), bf(c[3])],
            [0.7265625, 1.0390625, 1.1953125, 1.2734375]
        );
        assert_eq!(
            [bf(s[0]), bf(s[1]), bf(s[2]), bf(s[3])],
            [1.1328125, 0.85546875, 0.6171875, 0.43359375]
        );
        assert_eq!(bf(c[31]), 1.34375);
        let (c, _) = p.cos_sin(&f, 4096);
        assert_eq!(
            [bf(c[0]), bf(c[1]), bf(c[2]), bf(c[3])],
            [1.0859375, 0.51953125, -1.34375, -0.134765625]
        );
    }

    #[test]
    fn rotation_pairs_i_with_i_plus_half() {
        let mut x = [1.0, 2.0, 3.0, 4.0];
        // cos 0, sin 1: y[i] = -x[i+2], y[i+2] = x[i]
        rotate_half_split(&mut x, &[0.0, 0.0], &[1.0, 1.0]);
        assert_eq!(x, [-3.0, -4.0, 1.0, 2.0]);
    }
}
