//! Collecting a parsed assistant turn into an OpenAI-style message (for chat history and
//! API responses).

use super::json::JsonValue;
use super::parser::{HarmonyEvent, StopReason};
use super::types::{ChatMessage, FunctionCall, MessageContent, Role, ToolCall};

/// A tool call read from the model's output.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParsedToolCall {
    /// As written (`functions.get_weather`).
    pub recipient: String,
    /// Without the `functions.` namespace.
    pub name: String,
    /// `json` for `<|constrain|>json`.
    pub content_type: Option<String>,
    /// The raw argument text (not necessarily valid JSON).
    pub arguments: String,
}

/// Everything one assistant turn produced, accumulated from [`HarmonyEvent`]s.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AssistantTurn {
    pub reasoning: String,
    pub content: String,
    pub tool_calls: Vec<ParsedToolCall>,
    pub stop: Option<StopReason>,
}

impl AssistantTurn {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, event: &HarmonyEvent) {
        match event {
            HarmonyEvent::ReasoningDelta(t) => self.reasoning.push_str(t),
            HarmonyEvent::ContentDelta(t) => self.content.push_str(t),
            HarmonyEvent::ToolCallStart {
                recipient,
                name,
                content_type,
            } => self.tool_calls.push(ParsedToolCall {
                recipient: recipient.clone(),
                name: name.clone(),
                content_type: content_type.clone(),
                arguments: String::new(),
            }),
            HarmonyEvent::ToolCallArgsDelta(t) => {
                if let Some(call) = self.tool_calls.last_mut() {
                    call.arguments.push_str(t);
                }
            }
            HarmonyEvent::ToolCallEnd | HarmonyEvent::MessageEnd { .. } => {}
            HarmonyEvent::Stop(r) => self.stop = Some(*r),
        }
    }

    /// Accumulates all `events`.
    pub fn from_events<'a>(events: impl IntoIterator<Item = &'a HarmonyEvent>) -> Self {
        let mut t = Self::new();
        events.into_iter().for_each(|e| t.push(e));
        t
    }

    /// The turn as an assistant message for the history (tool call ids `call_0`, `call_1`, …;
    /// rendering it again gives the analysis, preamble/final and tool-call messages back).
    pub fn to_chat_message(&self) -> ChatMessage {
        ChatMessage {
            role: Role::Assistant,
            content: (!self.content.is_empty()).then(|| MessageContent::Text(self.content.clone())),
            tool_calls: self
                .tool_calls
                .iter()
                .enumerate()
                .map(|(i, c)| ToolCall {
                    id: Some(format!("call_{i}")),
                    kind: "function".to_string(),
                    function: FunctionCall {
                        name: c.name.clone(),
                        arguments: JsonValue::String(c.arguments.clone()),
                    },
                })
                .collect(),
            tool_call_id: None,
            name: None,
            reasoning_content: (!self.reasoning.is_empty()).then(|| self.reasoning.clone()),
        }
    }
}
