//! tool_choice: the values accepted, and the call constraint driven by a scripted "model" that
//! behaves like the script test backend (it prefers the next token of its script, and starts
//! the script again when it is fed a token it did not pick).

use std::sync::OnceLock;

use gptoss_models::harmony::Tool;
use gptoss_models::sampler::argmax;
use gptoss_models::tokenizer::{
    Tokenizer, CALL, CHANNEL, END, ENDOFTEXT, HARMONY_VOCAB_SIZE, MESSAGE, RETURN, START,
    STOP_TOKENS,
};
use serde_json::json;

use crate::output::{OutputMapper, Reply};
use crate::tool_choice::{apply_tool_choice, CallConstraint};

fn tok() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| Tokenizer::o200k_harmony().expect("built-in tokenizer"))
}

fn ids(text: &str) -> Vec<u32> {
    tok().encode_with_special(text).unwrap()
}

fn one(text: &str) -> u32 {
    let v = tok().encode(text).unwrap();
    assert_eq!(v.len(), 1, "{text:?} is not one token: {v:?}");
    v[0]
}

const REASONING: &str = "The user wants the weather. I will call get_weather.";
const ARGS: &str = r#"{"location": "Paris, France", "unit": "celsius"}"#;
const ANSWER: &str = "It is sunny in Paris.";

fn call_script(name: &str) -> String {
    format!(
        "<|channel|>analysis<|message|>{REASONING}<|end|><|start|>assistant<|channel|>commentary \
         to=functions.{name} <|constrain|>json<|message|>{ARGS}<|call|>"
    )
}

fn answer_script() -> String {
    format!(
        "<|channel|>analysis<|message|>{REASONING}<|end|><|start|>assistant<|channel|>final\
         <|message|>{ANSWER}<|return|>"
    )
}

/// Greedy decoding of a model that puts logit 100 on the next token of `script` (0 elsewhere),
/// with the constraint (if any) masking each draw. Returns the ids drawn.
fn run(script: &str, constraint: Option<CallConstraint>, max_tokens: usize) -> Vec<u32> {
    let script = ids(script);
    let mut c = constraint;
    let (mut at, mut last) = (0usize, None::<u32>);
    let mut out: Vec<u32> = Vec::new();
    while out.len() < max_tokens {
        // The script backend's rule: fed the token it picked, it goes on; else (the prompt,
        // or a token the constraint chose instead) it starts its script again.
        let decode = !out.is_empty() && out.last().copied() == last;
        if !decode {
            at = 0;
        }
        let want = script[at.min(script.len() - 1)];
        at += 1;
        last = Some(want);
        let mut logits = vec![0.0f32; HARMONY_VOCAB_SIZE as usize];
        logits[want as usize] = 100.0;
        if let Some(c) = c.as_mut() {
            c.mask(&mut logits);
        }
        let id = argmax(&logits);
        if let Some(c) = c.as_mut() {
            c.push(id);
        }
        out.push(id);
        if STOP_TOKENS.contains(&id) {
            break;
        }
    }
    out
}

fn reply(ids: &[u32]) -> Reply {
    let mut n = 0;
    let mut m = OutputMapper::new(
        tok(),
        &[],
        Box::new(move || {
            n += 1;
            format!("call_{n}")
        }),
    );
    for &id in ids {
        m.push(id);
    }
    m.finish();
    m.reply
}

fn required() -> CallConstraint {
    CallConstraint::new(tok(), vec!["get_weather".into(), "get_time".into()])
}

fn named(name: &str) -> CallConstraint {
    CallConstraint::new(tok(), vec![name.into()])
}

#[test]
fn tool_choice_values() {
    let tools = vec![
        Tool::function("get_weather", "weather", None),
        Tool::function("get_time", "time", None),
    ];
    let (t, must) = apply_tool_choice(Some(&json!("none")), tools.clone()).unwrap();
    assert!(t.is_empty() && must.is_none());
    let (t, must) = apply_tool_choice(Some(&json!("auto")), tools.clone()).unwrap();
    assert!(t.len() == 2 && must.is_none());
    let (t, must) = apply_tool_choice(None, tools.clone()).unwrap();
    assert!(t.len() == 2 && must.is_none());
    let (t, must) = apply_tool_choice(Some(&json!("required")), tools.clone()).unwrap();
    assert_eq!(t.len(), 2);
    assert_eq!(must.unwrap(), ["get_weather", "get_time"]);
    // Chat's shape and the Responses API's shape; every tool stays in the prompt.
    for choice in [
        json!({"type": "function", "function": {"name": "get_time"}}),
        json!({"type": "function", "name": "get_time"}),
    ] {
        let (t, must) = apply_tool_choice(Some(&choice), tools.clone()).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(must.unwrap(), ["get_time"]);
    }
    let other = json!({"type": "function", "function": {"name": "nope"}});
    let bad = |c: serde_json::Value, tools: Vec<Tool>| {
        apply_tool_choice(Some(&c), tools).unwrap_err().status
    };
    assert_eq!(bad(other, tools.clone()), 400);
    assert_eq!(bad(json!("required"), vec![]), 400);
    assert_eq!(bad(json!("maybe"), tools.clone()), 400);
    assert_eq!(bad(json!({"type": "function"}), tools.clone()), 400);
    assert_eq!(bad(json!(3), tools), 400);
}

#[test]
fn the_fake_model_answers_when_free() {
    // Without a constraint the scripted model answers: what the constraint must change.
    let r = reply(&run(&answer_script(), None, 200));
    assert_eq!(r.content, ANSWER);
    assert!(r.calls.is_empty());
}

#[test]
fn required_turns_an_answer_into_a_call() {
    let out = run(&answer_script(), Some(required()), 120);
    let r = reply(&out);
    assert_eq!(r.reasoning, REASONING);
    assert_eq!(r.content, "");
    assert_eq!(r.calls.len(), 1);
    assert!(["get_weather", "get_time"].contains(&r.calls[0].name.as_str()));
    assert!(!out.contains(&RETURN) && !out.contains(&ENDOFTEXT));
    // The reasoning is kept as the model wrote it, then the call header follows.
    let text = String::from_utf8_lossy(&tok().decode_bytes(&out)).into_owned();
    assert!(
        text.starts_with(&format!(
            "<|channel|>analysis<|message|>{REASONING}<|end|><|start|>assistant<|channel|>commentary to=functions.get_"
        )),
        "{text}"
    );
}

#[test]
fn named_turns_an_answer_into_that_call() {
    let r = reply(&run(&answer_script(), Some(named("get_time")), 120));
    assert_eq!(r.reasoning, REASONING);
    assert_eq!(r.content, "");
    assert_eq!(r.calls.len(), 1);
    assert_eq!(r.calls[0].name, "get_time");
}

#[test]
fn a_compliant_call_passes_unchanged() {
    for script in [
        call_script("get_weather"),
        call_script("get_time"),
        // Straight to the call, no reasoning.
        format!("<|channel|>commentary to=functions.get_time <|constrain|>json<|message|>{ARGS}<|call|>"),
        // The recipient before the channel, as the harmony renderer writes it.
        format!(
            "<|channel|>analysis<|message|>{REASONING}<|end|><|start|>assistant to=functions.get_time\
             <|channel|>commentary <|constrain|>json<|message|>{ARGS}<|call|>"
        ),
    ] {
        let free = run(&script, None, 300);
        let forced = run(&script, Some(required()), 300);
        assert_eq!(forced, free, "{script}");
        assert_eq!(forced.last(), Some(&CALL));
        let r = reply(&forced);
        assert_eq!(r.calls.len(), 1, "{script}");
        assert_eq!(r.calls[0].arguments, ARGS);
    }
    let exact = run(&call_script("get_time"), Some(named("get_time")), 300);
    assert_eq!(exact, ids(&call_script("get_time")));
}

#[test]
fn named_overrides_the_function_the_model_picks() {
    let out = run(&call_script("get_weather"), Some(named("get_time")), 120);
    let r = reply(&out);
    assert_eq!(r.reasoning, REASONING);
    assert_eq!(r.calls.len(), 1);
    assert_eq!(r.calls[0].name, "get_time");
    // And "required" lets the model pick among the tools.
    let r = reply(&run(&call_script("get_time"), Some(required()), 300));
    assert_eq!(r.calls[0].name, "get_time");
}

fn allowed(c: &mut CallConstraint, id: u32) -> bool {
    let mut logits = vec![1.0f32; HARMONY_VOCAB_SIZE as usize];
    c.mask(&mut logits);
    logits[id as usize].is_finite()
}

#[test]
fn mask_by_phase() {
    let mut c = required();
    // First: a channel (or the recipient), never text or another control token.
    assert!(allowed(&mut c, CHANNEL));
    assert!(allowed(&mut c, one(" to")));
    for id in [
        MESSAGE,
        START,
        END,
        RETURN,
        CALL,
        one("Hello"),
        one("final"),
    ] {
        assert!(!allowed(&mut c, id), "{id}");
    }
    c.push(CHANNEL);
    assert!(allowed(&mut c, one("analysis")));
    assert!(allowed(&mut c, one("comment")));
    assert!(!allowed(&mut c, one("final")));
    c.push(one("analysis"));
    assert!(allowed(&mut c, MESSAGE));
    assert!(!allowed(&mut c, one(" to")));
    c.push(MESSAGE);
    // Reasoning: any text, ended only by <|end|>.
    assert!(allowed(&mut c, one("Hello")) && allowed(&mut c, END));
    for id in [RETURN, CALL, START, CHANNEL, MESSAGE, ENDOFTEXT] {
        assert!(!allowed(&mut c, id), "{id}");
    }
    c.push(one("Hello"));
    c.push(END);
    // Then the call: <|start|>assistant and a call header only.
    assert!(allowed(&mut c, START));
    assert!(!allowed(&mut c, END) && !allowed(&mut c, one("Hello")));
    for id in ids("<|start|>assistant<|channel|>commentary to=functions.get_") {
        assert!(allowed(&mut c, id), "{id}");
        c.push(id);
    }
    assert!(allowed(&mut c, one("time")) && allowed(&mut c, one("weather")));
    assert!(!allowed(&mut c, one("date")));
    for id in ids("time <|constrain|>json<|message|>") {
        assert!(allowed(&mut c, id), "{id}");
        c.push(id);
    }
    // Arguments: any text, ended only by <|call|>.
    assert!(allowed(&mut c, one("{\"")) && allowed(&mut c, CALL));
    for id in [END, RETURN, START, CHANNEL, ENDOFTEXT] {
        assert!(!allowed(&mut c, id), "{id}");
    }
    assert!(!c.is_done());
    c.push(CALL);
    assert!(c.is_done());
    let mut logits = vec![1.0f32; HARMONY_VOCAB_SIZE as usize];
    c.mask(&mut logits);
    assert!(logits.iter().all(|l| *l == 1.0));
}

#[test]
fn short_logits_are_masked_within_their_length() {
    // A model whose vocabulary is smaller than the tokenizer's: only its ids are considered.
    let mut c = named("f");
    let mut logits = vec![0.0f32; 1024];
    c.mask(&mut logits);
    let keep: Vec<usize> = (0..1024).filter(|&i| logits[i].is_finite()).collect();
    assert!(!keep.is_empty());
    for id in keep {
        let bytes = tok().token_bytes(id as u32).unwrap();
        assert!(b" to=functions.f".starts_with(bytes), "{id}");
    }
}
