//! The sampler's draws, the limits table and the overrides' layering.

use super::*;

fn logits() -> Vec<f32> {
    vec![1.0, 3.0, 2.0, 0.5, 2.9]
}

#[test]
fn greedy_takes_the_argmax() {
    let mut s = Sampler::new(SamplingParams::greedy(1), 0, &[]);
    assert_eq!(s.sample(&mut logits()), 1);
}

#[test]
fn same_seed_same_draws_and_different_seeds_differ() {
    let p = SamplingParams {
        temperature: 1.5,
        ..SamplingParams::default()
    };
    let draw = |seed| {
        let mut s = Sampler::new(p.clone(), seed, &[]);
        (0..64).map(|_| s.sample(&mut logits())).collect::<Vec<_>>()
    };
    assert_eq!(draw(7), draw(7));
    assert_ne!(draw(7), draw(8));
}

#[test]
fn top_k_one_is_greedy_and_top_p_limits_candidates() {
    let p = SamplingParams {
        temperature: 1.0,
        top_k: 1,
        ..SamplingParams::default()
    };
    let mut s = Sampler::new(p, 3, &[]);
    assert!((0..50).all(|_| s.sample(&mut logits()) == 1));
    let p = SamplingParams {
        temperature: 1.0,
        top_p: 0.5,
        ..SamplingParams::default()
    };
    let mut s = Sampler::new(p, 3, &[]);
    let picks: std::collections::HashSet<u32> = (0..200).map(|_| s.sample(&mut logits())).collect();
    assert!(picks.is_subset(&[1, 4].into_iter().collect()), "{picks:?}");
}

#[test]
fn min_p_drops_unlikely_tokens() {
    let p = SamplingParams {
        temperature: 1.0,
        min_p: 0.5,
        ..SamplingParams::default()
    };
    let mut s = Sampler::new(p, 1, &[]);
    let picks: std::collections::HashSet<u32> = (0..300).map(|_| s.sample(&mut logits())).collect();
    assert!(!picks.contains(&0) && !picks.contains(&3), "{picks:?}");
}

#[test]
fn penalties_change_the_greedy_choice() {
    let p = SamplingParams {
        repetition_penalty: 2.0,
        ..SamplingParams::default()
    };
    let mut s = Sampler::new(p, 0, &[1]);
    assert_eq!(s.sample(&mut logits()), 4);
    let p = SamplingParams {
        presence_penalty: 1.0,
        ..SamplingParams::default()
    };
    let mut s = Sampler::new(p, 0, &[]);
    s.accept(1);
    assert_eq!(s.sample(&mut logits()), 4);
    let p = SamplingParams {
        frequency_penalty: 0.06,
        ..SamplingParams::default()
    };
    let mut s = Sampler::new(p, 0, &[]);
    s.accept(1);
    assert_eq!(s.sample(&mut logits()), 1);
    s.accept(1);
    assert_eq!(s.sample(&mut logits()), 4);
}

#[test]
fn overrides_layer_and_apply() {
    let request = SamplingOverrides {
        temperature: Some(0.3),
        stop: Some(vec!["\n".into()]),
        ..SamplingOverrides::default()
    };
    let checkpoint = SamplingOverrides::from_generation_config(&serde_json::json!({
        "do_sample": true, "temperature": 0.6, "repetition_penalty": 1.1
    }));
    assert_eq!(
        (checkpoint.temperature, checkpoint.top_p, checkpoint.top_k),
        (Some(0.6), Some(1.0), Some(50)),
        "transformers' defaults for what the file leaves out"
    );
    let p = request.or(&checkpoint).apply(SamplingParams::greedy(7));
    assert_eq!(
        (p.temperature, p.top_k, p.repetition_penalty, p.max_tokens),
        (0.3, 50, 1.1, 7)
    );
    assert_eq!(p.stop, ["\n"]);
    let greedy =
        SamplingOverrides::from_generation_config(&serde_json::json!({"temperature": 0.6}));
    assert_eq!(greedy.temperature, None, "no do_sample: greedy");
    assert_eq!(
        request.for_greedy().temperature,
        None,
        "a greedy answer keeps stop strings but not the temperature"
    );
}

#[test]
fn one_table_of_limits() {
    let ok = SamplingParams::default();
    assert_eq!(ok.validate(), Ok(()));
    for (p, field) in [
        (
            SamplingParams {
                temperature: 2.5,
                ..ok.clone()
            },
            "temperature",
        ),
        (
            SamplingParams {
                min_p: 1.5,
                ..ok.clone()
            },
            "min_p",
        ),
        (
            SamplingParams {
                repetition_penalty: 0.0,
                ..ok.clone()
            },
            "repetition_penalty",
        ),
        (
            SamplingParams {
                presence_penalty: -3.0,
                ..ok.clone()
            },
            "presence_penalty",
        ),
        (
            SamplingParams {
                max_tokens: 0,
                ..ok.clone()
            },
            "max_tokens",
        ),
        (
            SamplingParams {
                max_tokens: limits::MAX_TOKENS + 1,
                ..ok.clone()
            },
            "max_tokens",
        ),
        (
            SamplingParams {
                stop: vec!["a".into(); 5],
                ..ok.clone()
            },
            "stop",
        ),
        (
            SamplingParams {
                stop: vec![String::new()],
                ..ok.clone()
            },
            "stop",
        ),
    ] {
        assert_eq!(p.validate().unwrap_err().field, field);
    }
    let long = SamplingParams {
        max_tokens: 300,
        ..ok.clone()
    };
    assert!(long.validate().is_ok());
    let e = long.validate_within(256).unwrap_err();
    assert_eq!((e.field, e.value.as_str()), ("max_tokens", "300"));
    assert_eq!(e.to_string(), "`max_tokens` must be between 1 and 256");
}

#[test]
fn validation_names_the_field() {
    let p = SamplingParams {
        temperature: f32::NAN,
        ..SamplingParams::default()
    };
    assert!(p
        .validate()
        .unwrap_err()
        .to_string()
        .contains("temperature"));
    let p = SamplingParams {
        top_p: 0.0,
        ..SamplingParams::default()
    };
    assert!(p.validate().unwrap_err().to_string().contains("top_p"));
}
