//! Parser tests: golden completions fed whole, split and re-tokenized; malformed output; and a
//! seeded property test with random junk.

use std::collections::HashMap;
use std::sync::OnceLock;

use super::parser::*;
use super::turn::AssistantTurn;
use crate::tokenizer::{special, test_support::builtin, Tokenizer};

use HarmonyEvent::*;

/// Adjacent deltas of one kind merged, so differently split streams compare equal.
fn coalesce(events: impl IntoIterator<Item = HarmonyEvent>) -> Vec<HarmonyEvent> {
    let mut out: Vec<HarmonyEvent> = Vec::new();
    for e in events {
        match (out.last_mut(), &e) {
            (Some(ReasoningDelta(a)), ReasoningDelta(b))
            | (Some(ContentDelta(a)), ContentDelta(b))
            | (Some(ToolCallArgsDelta(a)), ToolCallArgsDelta(b)) => a.push_str(b),
            _ => out.push(e),
        }
    }
    out
}

fn parse(ids: &[u32]) -> Vec<HarmonyEvent> {
    coalesce(parse_completion(builtin(), ids))
}

fn ids(text: &str) -> Vec<u32> {
    builtin().encode_with_special(text).unwrap()
}

/// Spec 7.6's typical continuation of the 2 + 2 prompt.
const CONTINUATION: &[u32] = &[
    200005, 35644, 200008, 1844, 31064, 25, 392, 4827, 382, 220, 17, 659, 220, 17, 16842, 12295,
    81645, 13, 51441, 6052, 13, 200007, 200006, 173781, 200005, 17196, 200008, 17, 659, 220, 17,
    314, 220, 19, 13, 200002,
];

fn continuation_events() -> Vec<HarmonyEvent> {
    vec![
        ReasoningDelta("User asks: \"What is 2 + 2?\" Simple arithmetic. Provide answer.".into()),
        MessageEnd {
            channel: Some("analysis".into()),
        },
        ContentDelta("2 + 2 = 4.".into()),
        MessageEnd {
            channel: Some("final".into()),
        },
        Stop(StopReason::Return),
    ]
}

const TOOL_CALL_TEXT: &str = "<|channel|>analysis<|message|>Need to use function get_current_weather.<|end|>\
     <|start|>assistant<|channel|>commentary to=functions.get_current_weather <|constrain|>json<|message|>\
     {\"location\":\"San Francisco\"}<|call|>";

fn tool_call_events() -> Vec<HarmonyEvent> {
    vec![
        ReasoningDelta("Need to use function get_current_weather.".into()),
        MessageEnd {
            channel: Some("analysis".into()),
        },
        ToolCallStart {
            recipient: "functions.get_current_weather".into(),
            name: "get_current_weather".into(),
            content_type: Some("json".into()),
        },
        ToolCallArgsDelta("{\"location\":\"San Francisco\"}".into()),
        ToolCallEnd,
        MessageEnd {
            channel: Some("commentary".into()),
        },
        Stop(StopReason::Call),
    ]
}

#[test]
fn spec_continuation_gives_reasoning_then_answer_then_return() {
    assert_eq!(parse(CONTINUATION), continuation_events());
    assert_eq!(
        builtin().decode(&CONTINUATION[3..21]).unwrap(),
        "User asks: \"What is 2 + 2?\" Simple arithmetic. Provide answer."
    );
}

#[test]
fn tool_call_recipient_before_or_after_the_channel_and_with_or_without_space() {
    assert_eq!(parse(&ids(TOOL_CALL_TEXT)), tool_call_events());
    let variants = [
        TOOL_CALL_TEXT.replace(
            "<|start|>assistant<|channel|>commentary to=functions.get_current_weather <|constrain|>",
            "<|start|>assistant to=functions.get_current_weather<|channel|>commentary <|constrain|>",
        ),
        TOOL_CALL_TEXT.replace(" <|constrain|>json", "<|constrain|>json"),
        TOOL_CALL_TEXT.replace(" <|constrain|>json", " json"),
    ];
    for v in &variants {
        assert_eq!(parse(&ids(v)), tool_call_events(), "{v}");
    }
    // The recipient right after the prompt's `<|start|>assistant` (output starts with " to=").
    let first =
        " to=functions.get_current_weather<|channel|>commentary <|constrain|>json<|message|>\
                 {\"location\":\"San Francisco\"}<|call|>";
    assert_eq!(parse(&ids(first)), tool_call_events()[2..]);
}

#[test]
fn non_json_arguments_builtin_tool_and_max_tokens_cut() {
    // openai/harmony test-data/test_simple_tool_call.txt: analysis, <|return|> (ends the turn).
    let harmony_ids = [
        200005, 35644, 200008, 1844, 31064, 25, 392, 4827, 382, 290, 11122, 306, 40510, 16842,
        1416, 1309, 316, 1199, 37342, 170154, 4584, 13, 200002, 200006, 173781, 316, 28, 29712,
        170154, 200005, 35644, 3490, 200008, 10848, 7693, 1243, 392, 173844, 18583,
    ];
    let ev = parse(&harmony_ids);
    assert_eq!(ev.len(), 3);
    assert!(matches!(&ev[0], ReasoningDelta(t) if t.starts_with("User asks")));
    assert_eq!(ev[2], Stop(StopReason::Return));
    // Its tool-call tail alone (recipient in the header, plain content type, cut short).
    let ev = parse(&harmony_ids[23..]);
    assert_eq!(
        ev,
        vec![
            ToolCallStart {
                recipient: "lookup_weather".into(),
                name: "lookup_weather".into(),
                content_type: Some("code".into()),
            },
            ToolCallArgsDelta(builtin().decode(&harmony_ids[33..]).unwrap()),
            ToolCallEnd,
            MessageEnd {
                channel: Some("analysis".into())
            },
            Stop(StopReason::MaxTokens),
        ]
    );
    let ev = parse(&ids(
        "<|channel|>commentary to=functions.run<|message|>print(1)<|call|>",
    ));
    assert_eq!(
        ev[0],
        ToolCallStart {
            recipient: "functions.run".into(),
            name: "run".into(),
            content_type: None
        }
    );
    assert_eq!(ev[1], ToolCallArgsDelta("print(1)".into()));
}

#[test]
fn end_ends_a_message_not_the_turn_and_stop_ends_everything() {
    let mut p = HarmonyParser::new(builtin());
    let mut ev = Vec::new();
    for id in ids("<|channel|>final<|message|>one<|end|>") {
        ev.extend(p.push(id));
    }
    assert!(!p.is_done());
    assert_eq!(
        coalesce(ev),
        vec![
            ContentDelta("one".into()),
            MessageEnd {
                channel: Some("final".into())
            }
        ]
    );
    let mut ev = Vec::new();
    for id in ids("<|start|>assistant<|channel|>final<|message|>two<|endoftext|>more<|return|>") {
        ev.extend(p.push(id));
    }
    assert!(p.is_done());
    assert_eq!(
        coalesce(ev),
        vec![
            ContentDelta("two".into()),
            MessageEnd {
                channel: Some("final".into())
            },
            Stop(StopReason::EndOfText)
        ]
    );
    assert!(
        p.push(13225).is_empty() && p.finish().is_empty(),
        "nothing after the stop"
    );
}

#[test]
fn stray_tokens_never_leak_markup_and_text_is_kept() {
    let cases: &[(&str, Vec<HarmonyEvent>)] = &[
        (
            "<|channel|>final<|message|>Hello<|reserved_200013|> world<|constrain|><|message|>!<|return|>",
            vec![ContentDelta("Hello world!".into()), MessageEnd { channel: Some("final".into()) }, Stop(StopReason::Return)],
        ),
        (
            "<|channel|>final<|message|>A<|end|>stray text<|return|>",
            vec![
                ContentDelta("A".into()),
                MessageEnd { channel: Some("final".into()) },
                ContentDelta("stray text".into()),
                Stop(StopReason::Return),
            ],
        ),
        (
            "<|channel|>analysis<|message|>think<|channel|>final<|message|>answer<|return|>",
            vec![
                ReasoningDelta("think".into()),
                MessageEnd { channel: Some("analysis".into()) },
                ContentDelta("answer".into()),
                MessageEnd { channel: Some("final".into()) },
                Stop(StopReason::Return),
            ],
        ),
        ("Plain answer, no format", vec![ContentDelta("Plain answer, no format".into()), Stop(StopReason::MaxTokens)]),
        (
            "<|channel|>final<|start|>assistant<|channel|>final<|message|>ok<|return|>",
            vec![ContentDelta("ok".into()), MessageEnd { channel: Some("final".into()) }, Stop(StopReason::Return)],
        ),
        ("<|channel|>fin", vec![Stop(StopReason::MaxTokens)]),
    ];
    for (text, expected) in cases {
        assert_eq!(&parse(&ids(text)), expected, "{text}");
    }
    // Out-of-vocabulary ids are ignored.
    assert_eq!(
        parse(&[300_000, 201_088]),
        vec![Stop(StopReason::MaxTokens)]
    );
}

#[test]
fn text_without_a_header_streams_once_it_cannot_be_a_header() {
    let mut p = HarmonyParser::new(builtin());
    let first: Vec<_> = ids("Hello there")
        .into_iter()
        .flat_map(|id| p.push(id))
        .collect();
    assert!(first.is_empty(), "could still be a header");
    let more: Vec<_> = ids(",\nhow are you")
        .into_iter()
        .flat_map(|id| p.push(id))
        .collect();
    assert_eq!(
        coalesce(more),
        vec![ContentDelta("Hello there,\nhow are you".into())]
    );
    // A long line without a newline stops being a header candidate after 256 bytes.
    let long = "word ".repeat(80);
    let mut p = HarmonyParser::new(builtin());
    let ev: Vec<_> = ids(&long).into_iter().flat_map(|id| p.push(id)).collect();
    assert!(!ev.is_empty(), "streams before the end");
    let ev: Vec<_> = ev.into_iter().chain(p.finish()).collect();
    assert_eq!(
        coalesce(ev),
        vec![
            ContentDelta(long.clone()),
            MessageEnd { channel: None },
            Stop(StopReason::MaxTokens)
        ]
    );
    // After a channel mark, the overflowing text belongs to that channel.
    let long_analysis = format!("<|channel|>analysis {long}");
    let ev = parse(&ids(&long_analysis));
    assert_eq!(ev[0], ReasoningDelta(long.clone()));

    let mut p = HarmonyParser::between_messages(builtin());
    let ev: Vec<_> = ids("hi<|start|>assistant<|channel|>final<|message|>x<|return|>")
        .into_iter()
        .flat_map(|id| p.push(id))
        .collect();
    // "hi" lies outside any message; the flush at <|start|> and the answer merge when coalesced.
    assert_eq!(ev[0], ContentDelta("hi".into()));
    assert_eq!(
        coalesce(ev),
        vec![
            ContentDelta("hix".into()),
            MessageEnd {
                channel: Some("final".into())
            },
            Stop(StopReason::Return)
        ]
    );
}

/// The single-byte token of each byte value.
fn byte_tokens() -> &'static HashMap<u8, u32> {
    static MAP: OnceLock<HashMap<u8, u32>> = OnceLock::new();
    MAP.get_or_init(|| {
        let tok = builtin();
        (0..tok.vocab_size() as u32)
            .filter_map(|id| match tok.token_bytes(id) {
                Some([b]) if !tok.is_special(id) => Some((*b, id)),
                _ => None,
            })
            .collect()
    })
}

/// A completion as text pieces and special ids.
enum Seg {
    Text(&'static str),
    Sp(u32),
}

fn golden_completions() -> Vec<(Vec<Seg>, Vec<HarmonyEvent>)> {
    use Seg::*;
    vec![
        (
            vec![
                Sp(special::CHANNEL),
                Text("analysis"),
                Sp(special::MESSAGE),
                Text("User asks: \"What is 2 + 2?\" Simple arithmetic. Provide answer."),
                Sp(special::END),
                Sp(special::START),
                Text("assistant"),
                Sp(special::CHANNEL),
                Text("final"),
                Sp(special::MESSAGE),
                Text("2 + 2 = 4."),
                Sp(special::RETURN),
            ],
            continuation_events(),
        ),
        (
            vec![
                Sp(special::CHANNEL),
                Text("analysis"),
                Sp(special::MESSAGE),
                Text("Need to use function get_current_weather."),
                Sp(special::END),
                Sp(special::START),
                Text("assistant"),
                Sp(special::CHANNEL),
                Text("commentary to=functions.get_current_weather "),
                Sp(special::CONSTRAIN),
                Text("json"),
                Sp(special::MESSAGE),
                Text("{\"location\":\"San Francisco\"}"),
                Sp(special::CALL),
            ],
            tool_call_events(),
        ),
        (
            vec![
                Sp(special::CHANNEL),
                Text("analysis"),
                Sp(special::MESSAGE),
                Text("Réfléchir: 日本語 😀 naïve"),
                Sp(special::END),
                Sp(special::START),
                Text("assistant"),
                Sp(special::CHANNEL),
                Text("final"),
                Sp(special::MESSAGE),
                Text("Voilà — 答え: 👍🏽 done"),
                Sp(special::RETURN),
            ],
            vec![
                ReasoningDelta("Réfléchir: 日本語 😀 naïve".into()),
                MessageEnd {
                    channel: Some("analysis".into()),
                },
                ContentDelta("Voilà — 答え: 👍🏽 done".into()),
                MessageEnd {
                    channel: Some("final".into()),
                },
                Stop(StopReason::Return),
            ],
        ),
    ]
}

/// Ids of a completion, with text piece `split.0` cut at byte `split.1` (single-byte tokens
/// around a cut inside a character), or every text piece as single bytes when `bytes`.
fn build(tok: &Tokenizer, segs: &[Seg], split: Option<(usize, usize)>, bytes: bool) -> Vec<u32> {
    let enc = |s: &[u8]| -> Vec<u32> {
        match std::str::from_utf8(s) {
            Ok(t) if !bytes => tok.encode(t).unwrap(),
            _ => s.iter().map(|b| byte_tokens()[b]).collect(),
        }
    };
    let mut out = Vec::new();
    for (i, seg) in segs.iter().enumerate() {
        match seg {
            Seg::Sp(id) => out.push(*id),
            Seg::Text(t) => match split {
                Some((j, at)) if j == i => {
                    out.extend(enc(&t.as_bytes()[..at]));
                    out.extend(enc(&t.as_bytes()[at..]));
                }
                _ => out.extend(enc(t.as_bytes())),
            },
        }
    }
    out
}

#[test]
fn golden_completions_split_at_every_boundary_give_the_same_events() {
    let tok = builtin();
    for (segs, expected) in golden_completions() {
        let whole = build(tok, &segs, None, false);
        assert_eq!(parse(&whole), expected);
        assert_eq!(
            parse(&build(tok, &segs, None, true)),
            expected,
            "every byte its own token"
        );
        // Fed in two chunks at every token boundary, through one parser.
        for k in 0..=whole.len() {
            let mut p = HarmonyParser::new(tok);
            let mut ev: Vec<_> = whole[..k].iter().flat_map(|&id| p.push(id)).collect();
            ev.extend(whole[k..].iter().flat_map(|&id| p.push(id)));
            ev.extend(p.finish());
            assert_eq!(coalesce(ev), expected, "split after token {k}");
        }
        // Every text piece re-tokenized with a cut at every byte (inside characters too).
        for (i, seg) in segs.iter().enumerate() {
            if let Seg::Text(t) = seg {
                for at in 0..=t.len() {
                    assert_eq!(
                        parse(&build(tok, &segs, Some((i, at)), false)),
                        expected,
                        "piece {i} cut at {at}"
                    );
                }
            }
        }
    }
}

/// splitmix64, for reproducible junk.
struct Prng(u64);
impl Prng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn random_junk_never_panics_leaks_markup_or_loses_the_final_answer() {
    let tok = builtin();
    let words = [
        "hello",
        " world",
        "assistant",
        " to",
        "=",
        "functions",
        ".get",
        "analysis",
        "final",
        "commentary",
        " json",
        "\n",
        "  ",
        " 日本",
        "語",
        " 😀",
        "é",
        "{\"a\": 1}",
        "user",
        " code",
        "!",
    ];
    let mut ordinary: Vec<u32> = words.iter().flat_map(|w| tok.encode(w).unwrap()).collect();
    // Lone bytes of multibyte characters (partial UTF-8).
    ordinary.extend("😀é".bytes().map(|b| byte_tokens()[&b]));
    let controls = [
        special::START,
        special::END,
        special::MESSAGE,
        special::CHANNEL,
        special::CONSTRAIN,
        special::STARTOFTEXT,
        200_000,
        200_013,
        201_087,
        201_088,
        400_000,
    ];
    let stops = [special::RETURN, special::CALL, special::ENDOFTEXT];
    let answers = [
        "The answer is 42.",
        " 日本語で答え 😀",
        "naïve\nmulti-line\n  answer",
    ];
    let mut rng = Prng(0x5EED);
    for case in 0..3000 {
        let junk = |rng: &mut Prng, allow_stop: bool| -> Vec<u32> {
            let n = rng.below(25);
            (0..n)
                .map(|_| match rng.below(10) {
                    0..=5 => ordinary[rng.below(ordinary.len())],
                    6..=8 => controls[rng.below(controls.len())],
                    _ if allow_stop => stops[rng.below(stops.len())],
                    _ => special::END,
                })
                .collect()
        };
        let answer = answers[case % answers.len()];
        let mut seq = junk(&mut rng, false);
        seq.push(special::START);
        seq.extend(tok.encode("assistant").unwrap());
        seq.push(special::CHANNEL);
        seq.extend(tok.encode("final").unwrap());
        seq.push(special::MESSAGE);
        seq.extend(tok.encode(answer).unwrap());
        seq.push([special::END, special::RETURN, special::CALL, special::START][rng.below(4)]);
        seq.extend(junk(&mut rng, true));

        let events = parse_completion(tok, &seq);
        let turn = AssistantTurn::from_events(&events);
        assert!(
            turn.content.contains(answer),
            "case {case}: {seq:?} -> {events:?}"
        );
        let stops_seen = events.iter().filter(|e| matches!(e, Stop(_))).count();
        assert_eq!(stops_seen, 1, "case {case}");
        assert!(matches!(events.last(), Some(Stop(_))), "case {case}");
        let mut open_call = false;
        for e in &events {
            match e {
                ReasoningDelta(t) | ContentDelta(t) | ToolCallArgsDelta(t) => {
                    assert!(
                        !t.contains("<|") && !t.contains('\u{E000}') && !t.contains('\u{E001}'),
                        "case {case}: {t:?}"
                    );
                }
                ToolCallStart { .. } => {
                    assert!(!open_call, "case {case}: nested tool call");
                    open_call = true;
                }
                ToolCallEnd => {
                    assert!(open_call, "case {case}: end without start");
                    open_call = false;
                }
                _ => {}
            }
        }
        assert!(!open_call, "case {case}: tool call never ended");
    }
}
