//! The harmony chat format of gpt-oss (spec 7): rendering OpenAI-style chats to prompt token
//! ids, and parsing the model's output back into reasoning, answer and tool calls.
//!
//! - [`types`]: `ChatMessage`, `Tool`, `ReasoningEffort`, `ChatRequest` (serde, OpenAI shape).
//! - [`render`]: [`render_prompt`] → ids ending in `<|start|>assistant`.
//! - [`parser`]: [`HarmonyParser`], fed one id at a time, emits [`HarmonyEvent`]s.
//! - [`turn`]: [`AssistantTurn`] collects events into a message for the history.
//!
//! Sampling stops on [`crate::tokenizer::STOP_TOKENS`] (`<|return|>`, `<|call|>`,
//! `<|endoftext|>`); `<|end|>` only ends one message.

pub mod json;
pub mod parser;
pub mod render;
pub mod turn;
pub mod types;
mod typescript;

pub use json::JsonValue;
pub use parser::{parse_completion, HarmonyEvent, HarmonyParser, StopReason};
pub use render::{
    render_messages, render_prompt, to_harmony_messages, HarmonyMessage, RenderOptions,
};
pub use turn::{AssistantTurn, ParsedToolCall};
pub use types::{
    ChatMessage, ChatRequest, ContentPart, FunctionCall, FunctionDef, MessageContent,
    ReasoningEffort, Role, Tool, ToolCall,
};

use crate::tokenizer::Tokenizer;
use gptoss_core::Result;

impl ChatRequest {
    /// The prompt ids of this request; its `reasoning_effort`, when set, overrides `opts`'.
    pub fn render(&self, tok: &Tokenizer, opts: &RenderOptions) -> Result<Vec<u32>> {
        let mut opts = opts.clone();
        if let Some(effort) = self.reasoning_effort {
            opts.reasoning_effort = effort;
        }
        render_prompt(tok, &self.messages, &self.tools, &opts)
    }
}

#[cfg(test)]
mod golden_tests;
#[cfg(test)]
mod parser_tests;
#[cfg(test)]
mod render_tests;
