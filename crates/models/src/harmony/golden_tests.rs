//! Golden prompts: the spec's worked examples (7.6) and conversations rendered by the
//! official openai-harmony renderer (testdata/official_render.json, made by
//! testdata/make_fixtures.py).

use super::*;
use crate::tokenizer::test_support::builtin;

/// Spec 7.6: system + developer (instructions, one tool) + user + analysis + tool call + tool
/// result, for completion (230 ids).
const WORKED_EXAMPLE: &[u32] = &[
    200006, 17360, 200008, 3575, 553, 17554, 162016, 11, 261, 4410, 6439, 2359, 22203, 656, 7788,
    17527, 558, 87447, 100594, 25, 220, 1323, 19, 12, 3218, 198, 6576, 3521, 25, 220, 1323, 20, 12,
    3218, 12, 2029, 279, 30377, 289, 25, 1932, 279, 2, 13888, 18403, 25, 8450, 11, 49159, 11, 1721,
    13, 21030, 2804, 413, 7360, 395, 1753, 3176, 558, 63446, 316, 1879, 8437, 2804, 810, 316, 290,
    49159, 9334, 25, 461, 44580, 6120, 200007, 200006, 77944, 200008, 2, 68406, 279, 8470, 261,
    11888, 23206, 364, 2, 20574, 279, 877, 9964, 279, 4797, 9964, 95359, 21733, 290, 2208, 11122,
    306, 290, 5181, 5100, 558, 2493, 717, 23981, 170154, 314, 11350, 25, 10168, 623, 5030, 326,
    2608, 11, 319, 1940, 13, 6610, 18826, 11, 13180, 198, 7693, 25, 1621, 412, 4078, 8528, 392, 66,
    63110, 1, 1022, 392, 40364, 11732, 672, 602, 2787, 25, 274, 63110, 198, 9263, 871, 1062, 502,
    92, 602, 9819, 9964, 200007, 200006, 1428, 200008, 4827, 382, 290, 11122, 1299, 306, 38371, 30,
    200007, 200006, 173781, 200005, 35644, 200008, 23483, 316, 1199, 1114, 717, 23981, 170154, 13,
    200007, 200006, 173781, 316, 28, 44580, 775, 23981, 170154, 200005, 12606, 815, 220, 200003,
    4108, 200008, 10848, 7693, 7534, 28499, 18826, 18583, 200012, 200006, 44580, 775, 23981,
    170154, 316, 28, 173781, 200005, 12606, 815, 200008, 10848, 41133, 3008, 1243, 1343, 11, 392,
    54267, 1243, 220, 455, 92, 200007, 200006, 173781,
];

/// Spec 7.6, the simpler vector: date 2025-06-28, medium, no tools, "What is 2 + 2?" (75 ids).
const SIMPLE: &[u32] = &[
    200006, 17360, 200008, 3575, 553, 17554, 162016, 11, 261, 4410, 6439, 2359, 22203, 656, 7788,
    17527, 558, 87447, 100594, 25, 220, 1323, 19, 12, 3218, 198, 6576, 3521, 25, 220, 1323, 20, 12,
    3218, 12, 2029, 279, 30377, 289, 25, 14093, 279, 2, 13888, 18403, 25, 8450, 11, 49159, 11,
    1721, 13, 21030, 2804, 413, 7360, 395, 1753, 3176, 13, 200007, 200006, 1428, 200008, 4827, 382,
    220, 17, 659, 220, 17, 30, 200007, 200006, 173781,
];

pub(super) fn weather_tool() -> Tool {
    let params = JsonValue::parse(
        r#"{"type": "object", "properties": {
            "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
            "format": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"}},
            "required": ["location"]}"#,
    )
    .unwrap();
    Tool::function(
        "get_current_weather",
        "Gets the current weather in the provided location.",
        Some(params),
    )
}

fn dated(effort: ReasoningEffort) -> RenderOptions {
    RenderOptions {
        reasoning_effort: effort,
        current_date: Some("2025-06-28".into()),
        ..Default::default()
    }
}

#[test]
fn spec_worked_example_renders_exactly() {
    let messages = vec![
        ChatMessage::system("Use a friendly tone."),
        ChatMessage::user("What is the weather like in SF?"),
        ChatMessage {
            content: None,
            ..ChatMessage::assistant("")
                .with_reasoning("Need to use function get_current_weather.")
                .with_tool_call(
                    Some("call_1"),
                    "get_current_weather",
                    r#"{"location":"San Francisco"}"#,
                )
        },
        ChatMessage {
            tool_call_id: Some("call_1".into()),
            ..ChatMessage::tool_result("", r#"{"sunny": true, "temperature": 20}"#)
        },
    ];
    let ids = render_prompt(
        builtin(),
        &messages,
        &[weather_tool()],
        &dated(ReasoningEffort::High),
    )
    .unwrap();
    assert_eq!(ids.len(), 230);
    assert_eq!(ids, WORKED_EXAMPLE);
    // Rendering piecewise equals encoding the whole text with special tokens allowed.
    let text = builtin().decode(&ids).unwrap();
    assert_eq!(
        builtin().encode_with_special(&text).unwrap(),
        WORKED_EXAMPLE
    );
}

#[test]
fn spec_simple_vector_renders_exactly() {
    let ids = render_prompt(
        builtin(),
        &[ChatMessage::user("What is 2 + 2?")],
        &[],
        &dated(ReasoningEffort::Medium),
    )
    .unwrap();
    assert_eq!(ids, SIMPLE);
}

#[derive(serde::Deserialize)]
struct OfficialCase {
    name: String,
    request: ChatRequest,
    options: FixtureOptions,
    ids: Vec<u32>,
    text: String,
}

#[derive(serde::Deserialize)]
struct FixtureOptions {
    current_date: Option<String>,
}

#[test]
fn conversations_match_the_official_renderer() {
    let cases: Vec<OfficialCase> =
        serde_json::from_str(include_str!("testdata/official_render.json")).unwrap();
    assert!(cases.len() >= 10);
    for case in &cases {
        let opts = RenderOptions {
            current_date: case.options.current_date.clone(),
            ..Default::default()
        };
        let ids = case.request.render(builtin(), &opts).unwrap();
        let text = builtin().decode(&ids).unwrap();
        assert_eq!(text, case.text, "case {}: text", case.name);
        assert_eq!(ids, case.ids, "case {}: ids", case.name);
    }
}
