//! Text in, text out through the `gptoss` binary: tokenize, detokenize, generate (harmony and
//! raw) on a synthetic model with the real vocabulary, errors.

mod synthetic;

use std::path::PathBuf;
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

fn gptoss(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gptoss"))
        .args(args)
        .env_remove("GPTOSS_CONFIG")
        .output()
        .expect("runs gptoss")
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "gptoss failed: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).expect("stdout is UTF-8")
}

fn err(o: &Output) -> String {
    assert!(!o.status.success(), "gptoss should have failed");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ids(json: &str) -> Vec<u32> {
    serde_json::from_str(json.trim()).expect("a JSON array of ids")
}

/// Spec 7.6's simple vector: "What is 2 + 2?" on 2025-06-28, medium reasoning.
const SIMPLE: &[u32] = &[
    200006, 17360, 200008, 3575, 553, 17554, 162016, 11, 261, 4410, 6439, 2359, 22203, 656, 7788,
    17527, 558, 87447, 100594, 25, 220, 1323, 19, 12, 3218, 198, 6576, 3521, 25, 220, 1323, 20, 12,
    3218, 12, 2029, 279, 30377, 289, 25, 14093, 279, 2, 13888, 18403, 25, 8450, 11, 49159, 11,
    1721, 13, 21030, 2804, 413, 7360, 395, 1753, 3176, 13, 200007, 200006, 1428, 200008, 4827, 382,
    220, 17, 659, 220, 17, 30, 200007, 200006, 173781,
];

#[test]
fn tokenize_text_gives_the_spec_ids() {
    let model = fixture("tiny-b");
    let out = ok(&gptoss(&[
        "tokenize",
        "--model",
        model.to_str().unwrap(),
        "--text",
        "What is 2 + 2?",
    ]));
    assert_eq!(ids(&out), [4827, 382, 220, 17, 659, 220, 17, 30]);
    // Special-token text in user input stays text.
    let out = ok(&gptoss(&["tokenize", "--text", "<|start|>"]));
    assert!(!ids(&out).contains(&200006), "{out}");
}

#[test]
fn tokenize_messages_renders_the_spec_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let bare = dir.path().join("bare.json");
    std::fs::write(&bare, r#"[{"role": "user", "content": "What is 2 + 2?"}]"#).unwrap();
    let out = ok(&gptoss(&[
        "tokenize",
        "--messages",
        bare.to_str().unwrap(),
        "--date",
        "2025-06-28",
    ]));
    assert_eq!(ids(&out), SIMPLE);
    assert_eq!(SIMPLE.len(), 75);

    // The object form; its reasoning_effort changes the system message ("Reasoning: high").
    let obj = dir.path().join("obj.json");
    std::fs::write(
        &obj,
        r#"{"messages": [{"role": "user", "content": "What is 2 + 2?"}], "reasoning_effort": "high"}"#,
    )
    .unwrap();
    let high = ids(&ok(&gptoss(&[
        "tokenize",
        "--messages",
        obj.to_str().unwrap(),
        "--date",
        "2025-06-28",
    ])));
    assert_ne!(high, SIMPLE);
    assert_eq!(
        &high[high.len() - 2..],
        [200006, 173781],
        "ends <|start|>assistant"
    );
    let text = ok(&gptoss(&["detokenize", &format!("{high:?}")]));
    assert!(text.contains("Reasoning: high"), "{text}");

    // Without --date the system message carries today's date; --no-date drops the line.
    let today = ok(&gptoss(&["tokenize", "--messages", bare.to_str().unwrap()]));
    assert_eq!(ids(&today).len(), SIMPLE.len());
    let none = ids(&ok(&gptoss(&[
        "tokenize",
        "--messages",
        bare.to_str().unwrap(),
        "--no-date",
    ])));
    assert!(none.len() < SIMPLE.len());

    // Bad inputs are errors, not panics.
    let e = err(&gptoss(&[
        "tokenize",
        "--messages",
        bare.to_str().unwrap(),
        "--date",
        "2025-02-30",
    ]));
    assert!(e.contains("2025-02-30"), "{e}");
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, "{\"messages\": [{\"role\": \"wizard\"}]}").unwrap();
    let e = err(&gptoss(&[
        "tokenize",
        "--messages",
        broken.to_str().unwrap(),
    ]));
    assert!(e.contains("broken.json"), "{e}");
}

#[test]
fn detokenize_round_trips() {
    let text = "Hello, 世界! 🎉\n\tcode: fn main() {}";
    let encoded = ok(&gptoss(&["tokenize", "--text", text]));
    // The JSON array as tokenize prints it, and the comma form.
    let back = ok(&gptoss(&["detokenize", encoded.trim()]));
    assert_eq!(back.strip_suffix('\n').unwrap(), text);
    let comma: Vec<String> = ids(&encoded).iter().map(u32::to_string).collect();
    let back = ok(&gptoss(&["detokenize", &comma.join(",")]));
    assert_eq!(back.strip_suffix('\n').unwrap(), text);
    // Special tokens come out as their names.
    let out = ok(&gptoss(&["detokenize", "200006,1428,200008,200007"]));
    assert_eq!(out.trim_end(), "<|start|>user<|message|><|end|>");
    // Ids outside the vocabulary and junk are clear errors.
    let e = err(&gptoss(&["detokenize", "1,300000"]));
    assert!(e.contains("300000"), "{e}");
    let e = err(&gptoss(&["detokenize", "1,x"]));
    assert!(e.contains("'x'"), "{e}");
}

#[test]
fn text_prompt_on_a_small_vocab_model_is_a_clear_error() {
    let model = fixture("tiny-b");
    for extra in [&[][..], &["--raw"][..]] {
        let mut args = vec![
            "generate",
            "--model",
            model.to_str().unwrap(),
            "hello there",
        ];
        args.extend_from_slice(extra);
        let e = err(&gptoss(&args));
        assert!(
            e.contains("vocab_size is 1024") && e.contains("only takes --tokens"),
            "{e}"
        );
        assert!(!e.contains("panicked"), "{e}");
    }
    let e = err(&gptoss(&["chat", "--model", model.to_str().unwrap()]));
    assert!(e.contains("vocab_size is 1024"), "{e}");
}

fn generate(model: &std::path::Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--backend",
        "cpu",
        "--date",
        "2025-06-28",
    ];
    args.extend_from_slice(extra);
    gptoss(&args)
}

fn generated_count(stderr: &str) -> usize {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("generated "))
        .unwrap_or_else(|| panic!("no 'generated N tokens' line in {stderr}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn generate_text_end_to_end_is_seeded_and_clean() {
    let dir = synthetic::model_dir();
    let m = dir.path();
    let run = |seed: &str, extra: &[&str]| {
        let mut args = vec!["What is 2 + 2?", "--seed", seed, "--max-tokens", "40"];
        args.extend_from_slice(extra);
        generate(m, &args)
    };

    let a = run("7", &[]);
    let a_out = ok(&a);
    let a_err = String::from_utf8_lossy(&a.stderr).into_owned();
    assert_eq!(generated_count(&a_err), 40, "{a_err}");
    // The harmony markup the model babbles never reaches the answer.
    assert!(!a_out.contains("<|"), "markup leaked: {a_out:?}");
    assert!(
        a_out.contains("Hello") || a_out.contains("world") || a_out.contains('.'),
        "{a_out:?}"
    );
    // Same seed, same output; another seed, another output.
    assert_eq!(ok(&run("7", &[])), a_out);
    let others: Vec<String> = ["8", "9", "10"].iter().map(|s| ok(&run(s, &[]))).collect();
    assert!(others.iter().any(|o| *o != a_out), "{others:?}");

    // --show-reasoning adds the reasoning on stderr; stdout stays the answer.
    let shown: Vec<Output> = ["7", "8", "9", "10", "11"]
        .iter()
        .map(|s| run(s, &["--show-reasoning"]))
        .collect();
    assert_eq!(ok(&shown[0]), a_out);
    assert!(
        shown
            .iter()
            .any(|o| String::from_utf8_lossy(&o.stderr).contains("[reasoning] ")),
        "no reasoning in any of 5 runs"
    );
    for o in &shown {
        assert!(!String::from_utf8_lossy(&o.stderr).contains("<|"));
    }

    // --raw shows the completion as it is, control tokens included.
    let raw = ok(&run("7", &["--raw"]));
    assert!(raw.contains("<|"), "{raw:?}");

    // Greedy: the favoured word every time, twice the same.
    let greedy = |seed: &str| {
        let args = [
            "hi",
            "--raw",
            "--temperature",
            "0",
            "--seed",
            seed,
            "--max-tokens",
            "5",
        ];
        ok(&generate(m, &args))
    };
    let g = greedy("1");
    assert_eq!(g, greedy("2"), "greedy ignores the seed");
    assert_eq!(g.matches("analysis").count(), 5, "{g:?}");
}

#[test]
fn generate_respects_max_tokens_and_stop_strings() {
    let dir = synthetic::model_dir();
    let m = dir.path();
    for n in ["1", "3", "17"] {
        let o = generate(m, &["hi", "--seed", "3", "--max-tokens", n, "--raw"]);
        ok(&o);
        assert_eq!(
            generated_count(&String::from_utf8_lossy(&o.stderr)).to_string(),
            n
        );
    }
    // A stop string ends generation early and is not printed.
    let full = ok(&generate(
        m,
        &["hi", "--seed", "5", "--max-tokens", "60", "--raw"],
    ));
    assert!(full.contains(" world"), "{full:?}");
    let o = generate(
        m,
        &[
            "hi",
            "--seed",
            "5",
            "--max-tokens",
            "60",
            "--raw",
            "--stop",
            " world",
        ],
    );
    let cut = ok(&o);
    assert!(!cut.contains(" world"), "{cut:?}");
    assert_eq!(
        cut.trim_end_matches('\n'),
        &full[..full.find(" world").unwrap()]
    );
    assert!(generated_count(&String::from_utf8_lossy(&o.stderr)) < 60);
    // Bad sampling values are refused with the setting's name.
    let e = err(&generate(m, &["hi", "--top-p", "1.5"]));
    assert!(e.contains("top_p"), "{e}");
    let e = err(&generate(m, &["hi", "--max-tokens", "0"]));
    assert!(e.contains("max-tokens"), "{e}");
}
