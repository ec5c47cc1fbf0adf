//! OpenAI-style chat types accepted by the harmony renderer (the shapes of the Chat
//! Completions API: messages with tool calls, function tools with JSON-schema parameters).

use std::fmt;
use std::str::FromStr;

use gptoss_core::{Error, Result};
use serde::{Deserialize, Deserializer, Serialize};

use super::json::JsonValue;

/// How much the model reasons before answering (`Reasoning: …` in the system message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReasoningEffort {
    Low,
    #[default]
    Medium,
    High,
}

impl ReasoningEffort {
    pub fn as_str(self) -> &'static str {
        match self {
            ReasoningEffort::Low => "low",
            ReasoningEffort::Medium => "medium",
            ReasoningEffort::High => "high",
        }
    }
}

impl fmt::Display for ReasoningEffort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ReasoningEffort {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "low" => Ok(ReasoningEffort::Low),
            "medium" => Ok(ReasoningEffort::Medium),
            "high" => Ok(ReasoningEffort::High),
            _ => Err(Error::Input(format!(
                "reasoning effort must be low, medium or high, not '{s}'"
            ))),
        }
    }
}

/// Who wrote a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    Developer,
    User,
    Assistant,
    Tool,
}

/// One part of an array-form `content` (`{"type": "text", "text": "..."}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// `content`: a string or an array of text parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

impl MessageContent {
    /// The text (parts concatenated); a non-text part is an error.
    pub fn text(&self) -> Result<String> {
        match self {
            MessageContent::Text(t) => Ok(t.clone()),
            MessageContent::Parts(parts) => parts
                .iter()
                .map(|p| match (p.kind.as_str(), &p.text) {
                    ("text", Some(t)) => Ok(t.as_str()),
                    ("text", None) => Err(Error::Input(
                        "a content part of type 'text' has no 'text'".into(),
                    )),
                    (other, _) => Err(Error::Input(format!(
                        "content parts of type '{other}' are not supported: gpt-oss takes text only"
                    ))),
                })
                .collect(),
        }
    }
}

/// The function of a tool call: name and arguments (a JSON string as the API sends it, or a
/// JSON object).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    #[serde(default)]
    pub arguments: JsonValue,
}

impl FunctionCall {
    /// The arguments as the text the model wrote / should see: a string verbatim, anything
    /// else as compact JSON (an absent value as `{}`).
    pub fn arguments_text(&self) -> String {
        match &self.arguments {
            JsonValue::String(s) => s.clone(),
            JsonValue::Null => "{}".to_string(),
            other => other.to_string(),
        }
    }
}

fn function_kind() -> String {
    "function".to_string()
}

/// An assistant's call of a function tool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", default = "function_kind")]
    pub kind: String,
    pub function: FunctionCall,
}

/// A chat message in the OpenAI shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<MessageContent>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub tool_calls: Vec<ToolCall>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// For `tool` messages: the function that produced the result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The assistant's chain of thought (`analysis` channel). Also read from `reasoning`.
    #[serde(default, alias = "reasoning", skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
}

impl ChatMessage {
    fn new(role: Role, text: impl Into<String>) -> Self {
        ChatMessage {
            role,
            content: Some(MessageContent::Text(text.into())),
            tool_calls: Vec::new(),
            tool_call_id: None,
            name: None,
            reasoning_content: None,
        }
    }
    pub fn system(text: impl Into<String>) -> Self {
        Self::new(Role::System, text)
    }
    pub fn developer(text: impl Into<String>) -> Self {
        Self::new(Role::Developer, text)
    }
    pub fn user(text: impl Into<String>) -> Self {
        Self::new(Role::User, text)
    }
    pub fn assistant(text: impl Into<String>) -> Self {
        Self::new(Role::Assistant, text)
    }
    /// The result of the function `name`.
    pub fn tool_result(name: impl Into<String>, text: impl Into<String>) -> Self {
        ChatMessage {
            name: Some(name.into()),
            ..Self::new(Role::Tool, text)
        }
    }
    pub fn with_reasoning(mut self, reasoning: impl Into<String>) -> Self {
        self.reasoning_content = Some(reasoning.into());
        self
    }
    /// Adds a call of `name` with JSON `arguments` text.
    pub fn with_tool_call(
        mut self,
        id: Option<&str>,
        name: impl Into<String>,
        arguments: impl Into<String>,
    ) -> Self {
        self.tool_calls.push(ToolCall {
            id: id.map(str::to_string),
            kind: function_kind(),
            function: FunctionCall {
                name: name.into(),
                arguments: JsonValue::String(arguments.into()),
            },
        });
        self
    }
    /// The content as text ("" when absent).
    pub fn text(&self) -> Result<String> {
        self.content
            .as_ref()
            .map(MessageContent::text)
            .transpose()
            .map(Option::unwrap_or_default)
    }
}

/// A function tool definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionDef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON schema of the arguments; None renders as a function without parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<JsonValue>,
}

/// A tool in the OpenAI shape (`{"type": "function", "function": {...}}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    #[serde(rename = "type", default = "function_kind")]
    pub kind: String,
    pub function: FunctionDef,
}

impl Tool {
    pub fn function(
        name: impl Into<String>,
        description: impl Into<String>,
        parameters: Option<JsonValue>,
    ) -> Self {
        Tool {
            kind: function_kind(),
            function: FunctionDef {
                name: name.into(),
                description: Some(description.into()),
                parameters,
            },
        }
    }
}

/// A chat request file: messages, optional tools and reasoning effort (the body of a Chat
/// Completions request; other keys are ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub tools: Vec<Tool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_effort: Option<ReasoningEffort>,
}

impl ChatRequest {
    /// Parses the JSON text of a request, or of a bare array of messages (keys of tool
    /// schemas keep their order).
    pub fn from_json(text: &str) -> Result<ChatRequest> {
        let bad = |e: serde_json::Error| Error::Input(format!("not a valid chat request: {e}"));
        if text.trim_start().starts_with('[') {
            let messages = serde_json::from_str(text).map_err(bad)?;
            return Ok(ChatRequest {
                messages,
                tools: Vec::new(),
                reasoning_effort: None,
            });
        }
        serde_json::from_str(text).map_err(bad)
    }
}

fn null_as_default<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}
