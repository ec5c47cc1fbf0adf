//! The harmony output mapping: reasoning, answer and tool calls without markup; stop strings.

use std::sync::OnceLock;

use gptoss_models::tokenizer::Tokenizer;

use crate::output::{OutputMapper, Piece};

fn tok() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| Tokenizer::o200k_harmony().expect("built-in tokenizer"))
}

fn run(text: &str, stop: &[&str]) -> (Vec<Piece>, OutputMapper) {
    let stop: Vec<String> = stop.iter().map(|s| s.to_string()).collect();
    let mut n = 0;
    let mut m = OutputMapper::new(
        tok(),
        &stop,
        Box::new(move || {
            n += 1;
            format!("call_{n}")
        }),
    );
    let mut pieces = Vec::new();
    for id in tok().encode_with_special(text).unwrap() {
        pieces.extend(m.push(id));
        if m.stopped() {
            break;
        }
    }
    pieces.extend(m.finish());
    (pieces, m)
}

#[test]
fn reasoning_then_tool_call() {
    let (pieces, m) = run(
        "<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant<|channel|>commentary \
         to=functions.get_weather <|constrain|>json<|message|>{\"city\": \"Paris\"}<|call|>",
        &[],
    );
    assert_eq!(m.reply.reasoning, "Need weather.");
    assert_eq!(m.reply.content, "");
    assert_eq!(m.reply.calls.len(), 1);
    assert_eq!(m.reply.calls[0].name, "get_weather");
    assert_eq!(m.reply.calls[0].id, "call_1");
    assert_eq!(m.reply.calls[0].arguments, "{\"city\": \"Paris\"}");
    assert!(pieces.contains(&Piece::ToolStart {
        index: 0,
        id: "call_1".into(),
        name: "get_weather".into()
    }));
    assert_eq!(pieces.last(), Some(&Piece::ToolEnd { index: 0 }));
}

#[test]
fn final_answer_has_no_markup_and_stop_strings_cut_it() {
    let text = "<|channel|>analysis<|message|>Think.<|end|><|start|>assistant<|channel|>final\
                <|message|>Hello world. Bye now.<|return|>";
    let (_, m) = run(text, &[]);
    assert_eq!(m.reply.content, "Hello world. Bye now.");
    assert_eq!(m.reply.reasoning, "Think.");
    let (_, m) = run(text, &[" Bye"]);
    assert!(m.stopped());
    assert_eq!(m.reply.content, "Hello world.");
}
