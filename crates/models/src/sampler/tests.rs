use super::*;

fn logits() -> Vec<f32> {
    vec![0.5, 2.0, -1.0, 1.9, 0.0, 3.5, -0.5, 3.4]
}

fn sampler(p: SamplingParams) -> Sampler {
    Sampler::new(p).expect("valid params")
}

fn draws(p: SamplingParams, n: usize) -> Vec<u32> {
    let mut s = sampler(p);
    (0..n).map(|_| s.sample(&mut logits(), &[])).collect()
}

#[test]
fn greedy_is_argmax_and_top_k_one_is_greedy() {
    assert_eq!(argmax(&logits()), 5);
    assert_eq!(draws(SamplingParams::greedy(), 5), vec![5; 5]);
    let p = SamplingParams {
        top_k: 1,
        temperature: 1.5,
        seed: Some(1),
        ..Default::default()
    };
    assert_eq!(draws(p, 200), vec![5; 200]);
    // Ties go to the lowest id; NaN is never chosen.
    assert_eq!(argmax(&[1.0, f32::NAN, 3.0, 3.0]), 2);
    assert_eq!(argmax(&[f32::NAN, f32::NAN]), 0);
}

#[test]
fn tiny_top_p_is_argmax_and_top_k_limits_the_choice() {
    let p = SamplingParams {
        top_p: 1e-6,
        seed: Some(3),
        ..Default::default()
    };
    assert_eq!(draws(p, 200), vec![5; 200]);
    let p = SamplingParams {
        top_k: 2,
        seed: Some(3),
        ..Default::default()
    };
    let d = draws(p, 2000);
    assert!(
        d.iter().all(|&t| t == 5 || t == 7),
        "only the two largest logits"
    );
    assert!(d.contains(&5) && d.contains(&7));
}

#[test]
fn top_p_keeps_the_smallest_set_reaching_the_mass() {
    // Probabilities 0.5, 0.3, 0.2 (logits = ln p).
    let base: Vec<f32> = [0.5f32, 0.3, 0.2].iter().map(|p| p.ln()).collect();
    let mut s = sampler(SamplingParams {
        top_p: 0.75,
        seed: Some(9),
        ..Default::default()
    });
    let d: Vec<u32> = (0..3000)
        .map(|_| s.sample(&mut base.clone(), &[]))
        .collect();
    assert!(!d.contains(&2), "0.5 + 0.3 >= 0.75: the 0.2 token is cut");
    let share0 = d.iter().filter(|&&t| t == 0).count() as f64 / d.len() as f64;
    assert!(
        (share0 - 0.625).abs() < 0.04,
        "renormalised 0.5/0.8, got {share0}"
    );
}

#[test]
fn min_p_drops_tokens_below_the_fraction_of_the_top() {
    // Relative to the top: 1, 0.5, 0.09.
    let base: Vec<f32> = [1.0f32, 0.5, 0.09].iter().map(|p| p.ln()).collect();
    let mut s = sampler(SamplingParams {
        min_p: 0.1,
        seed: Some(5),
        ..Default::default()
    });
    let d: Vec<u32> = (0..3000)
        .map(|_| s.sample(&mut base.clone(), &[]))
        .collect();
    assert!(!d.contains(&2));
    assert!(d.contains(&1) && d.contains(&0));
}

#[test]
fn temperature_sharpens_and_flattens() {
    let share_top = |t: f32| {
        let d = draws(
            SamplingParams {
                temperature: t,
                seed: Some(11),
                ..Default::default()
            },
            4000,
        );
        d.iter().filter(|&&x| x == 5).count() as f64 / d.len() as f64
    };
    // Softmax at T=1: p(5) = e^3.5 / sum ≈ 0.45.
    let z: f64 = logits().iter().map(|&l| (l as f64).exp()).sum();
    let expected = 3.5f64.exp() / z;
    let at1 = share_top(1.0);
    assert!(
        (at1 - expected).abs() < 0.03,
        "T=1 share {at1}, softmax {expected}"
    );
    assert!(share_top(0.3) > at1 + 0.1);
    assert!(share_top(3.0) < at1 - 0.1);
}

#[test]
fn penalties_change_the_right_logits_by_the_right_amounts() {
    let mut s = sampler(SamplingParams {
        temperature: 0.0,
        frequency_penalty: 0.5,
        presence_penalty: 0.25,
        ..Default::default()
    });
    let mut l = logits();
    let history = [5, 5, 1, 99_999];
    s.sample(&mut l, &history);
    let mut expected = logits();
    expected[5] -= 0.5 * 2.0 + 0.25;
    expected[1] -= 0.5 + 0.25;
    assert_eq!(
        l, expected,
        "only ids 5 (twice) and 1 (once) change; out-of-range ids ignored"
    );

    let mut s = sampler(SamplingParams {
        temperature: 0.0,
        repetition_penalty: 2.0,
        ..Default::default()
    });
    let mut l = logits();
    let choice = s.sample(&mut l, &[5, 5, 2]);
    assert_eq!(
        l[5], 1.75,
        "positive logit divided once, not per occurrence"
    );
    assert_eq!(l[2], -2.0, "negative logit multiplied");
    assert_eq!(l[7], 3.4);
    assert_eq!(choice, 7, "the penalty moves the argmax");
}

#[test]
fn same_seed_same_tokens_different_seeds_differ() {
    let p = |seed| SamplingParams {
        seed: Some(seed),
        ..Default::default()
    };
    let a = draws(p(1234), 300);
    assert_eq!(a, draws(p(1234), 300));
    let b = draws(p(1235), 300);
    assert_ne!(a, b);
    let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
    assert!(
        same < 250,
        "independent streams agree only by chance ({same}/300)"
    );
    assert_eq!(sampler(p(77)).seed(), 77);
}

#[test]
fn invalid_settings_are_errors_naming_the_setting() {
    let cases = [
        (
            SamplingParams {
                temperature: -1.0,
                ..Default::default()
            },
            "temperature",
        ),
        (
            SamplingParams {
                temperature: f32::NAN,
                ..Default::default()
            },
            "temperature",
        ),
        (
            SamplingParams {
                top_p: 0.0,
                ..Default::default()
            },
            "top_p",
        ),
        (
            SamplingParams {
                top_p: 1.5,
                ..Default::default()
            },
            "top_p",
        ),
        (
            SamplingParams {
                min_p: -0.1,
                ..Default::default()
            },
            "min_p",
        ),
        (
            SamplingParams {
                repetition_penalty: 0.0,
                ..Default::default()
            },
            "repetition_penalty",
        ),
        (
            SamplingParams {
                frequency_penalty: f32::INFINITY,
                ..Default::default()
            },
            "frequency_penalty",
        ),
        (
            SamplingParams {
                max_tokens: Some(0),
                ..Default::default()
            },
            "max_tokens",
        ),
    ];
    for (p, name) in cases {
        let e = Sampler::new(p).expect_err(name).to_string();
        assert!(e.contains(name), "{e}");
    }
    assert!(Sampler::new(SamplingParams::default()).is_ok());
}

#[test]
fn degenerate_logits_never_panic() {
    let mut s = sampler(SamplingParams {
        seed: Some(1),
        top_k: 3,
        top_p: 0.5,
        min_p: 0.2,
        ..Default::default()
    });
    assert_eq!(s.sample(&mut [], &[1, 2]), 0);
    assert_eq!(s.sample(&mut [f32::NAN; 4], &[]), 0);
    assert_eq!(s.sample(&mut [f32::NEG_INFINITY, 1.0, f32::NAN], &[]), 1);
    assert_eq!(s.sample(&mut [0.0, f32::INFINITY, 1.0], &[]), 1);
    let params: SamplingParams =
        serde_json::from_str(r#"{"temperature": 0.7, "stop": ["\n\n"]}"#).unwrap();
    assert_eq!(
        (params.temperature, params.top_p, params.stop.len()),
        (0.7, 1.0, 1)
    );
}

#[test]
fn top_p_over_a_full_vocabulary_keeps_exactly_the_needed_head() {
    // Equal logits: ties go to the lower id, so top_p 0.5 keeps ids below half the vocabulary,
    // far beyond the first sorted heads (64, 512, 4096, 32768).
    let n = 201_088;
    let mut s = sampler(SamplingParams {
        top_p: 0.5,
        seed: Some(21),
        ..Default::default()
    });
    let d: Vec<u32> = (0..60).map(|_| s.sample(&mut vec![0.0; n], &[])).collect();
    assert!(d.iter().all(|&t| (t as usize) < n / 2 + 1));
    assert!(
        d.iter().any(|&t| t > 40_000),
        "the cut is not at an early head"
    );
    // A peaked distribution: token 7 holds most of the mass, then ids 100..110.
    let mut peaked = vec![-30.0f32; n];
    peaked[7] = 10.0;
    for v in &mut peaked[100..110] {
        *v = 8.0;
    }
    let mut s = sampler(SamplingParams {
        top_p: 0.9,
        seed: Some(2),
        ..Default::default()
    });
    let d: Vec<u32> = (0..200)
        .map(|_| s.sample(&mut peaked.clone(), &[]))
        .collect();
    assert!(d.iter().all(|&t| t == 7 || (100..110).contains(&t)));
    assert!(d.iter().any(|&t| t != 7));
}
