//! OpenAI-style chat → harmony messages → token ids (spec 7.1–7.5).
//!
//! Each message is rendered piecewise like the official renderer: special tokens by id, every
//! text piece (role, ` to=…`, channel, content) encoded separately with ordinary encoding, so
//! text that looks like `<|start|>` in user content stays plain text.

use gptoss_core::{Error, Result};

use super::types::{ChatMessage, ReasoningEffort, Role, Tool};
use super::typescript::tools_section;
use crate::tokenizer::{special, Tokenizer};

/// The identity line of the system message that gpt-oss was trained with.
pub const MODEL_IDENTITY: &str = "You are ChatGPT, a large language model trained by OpenAI.";
/// The knowledge cutoff line's value.
pub const KNOWLEDGE_CUTOFF: &str = "2024-06";

/// What goes into the system message, and how history is treated.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderOptions {
    pub reasoning_effort: ReasoningEffort,
    /// `Current date: …` line (e.g. "2025-06-28"); omitted when None.
    pub current_date: Option<String>,
    pub model_identity: String,
    pub knowledge_cutoff: String,
    /// Drop `analysis` messages before the first `final` one when the last assistant message
    /// is `final` (the official renderer's default, spec 7.5).
    pub auto_drop_analysis: bool,
}

impl Default for RenderOptions {
    fn default() -> Self {
        RenderOptions {
            reasoning_effort: ReasoningEffort::Medium,
            current_date: None,
            model_identity: MODEL_IDENTITY.to_string(),
            knowledge_cutoff: KNOWLEDGE_CUTOFF.to_string(),
            auto_drop_analysis: true,
        }
    }
}

/// One harmony message (spec 7.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HarmonyMessage {
    /// `system`, `developer`, `user`, `assistant`, or a tool's name (`functions.get_weather`).
    pub author: String,
    pub recipient: Option<String>,
    pub channel: Option<String>,
    /// E.g. `<|constrain|>json` (rendered as ` ` + special token + `json`).
    pub content_type: Option<String>,
    pub content: String,
}

impl HarmonyMessage {
    fn new(author: &str, content: impl Into<String>) -> Self {
        HarmonyMessage {
            author: author.to_string(),
            recipient: None,
            channel: None,
            content_type: None,
            content: content.into(),
        }
    }
    fn on(mut self, channel: &str) -> Self {
        self.channel = Some(channel.to_string());
        self
    }
    fn to(mut self, recipient: &str) -> Self {
        self.recipient = Some(recipient.to_string());
        self
    }
}

/// Token ids of the prompt: the conversation followed by `<|start|>assistant`, the point the
/// model continues from.
pub fn render_prompt(
    tok: &Tokenizer,
    messages: &[ChatMessage],
    tools: &[Tool],
    opts: &RenderOptions,
) -> Result<Vec<u32>> {
    let mut ids = render_messages(tok, &to_harmony_messages(messages, tools, opts)?)?;
    ids.push(special::START);
    ids.extend(tok.encode("assistant")?);
    Ok(ids)
}

/// Token ids of harmony messages, one after another.
pub fn render_messages(tok: &Tokenizer, messages: &[HarmonyMessage]) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    for m in messages {
        render_message(tok, m, &mut ids)?;
    }
    Ok(ids)
}

fn render_message(tok: &Tokenizer, m: &HarmonyMessage, ids: &mut Vec<u32>) -> Result<()> {
    const CONSTRAIN_TEXT: &str = "<|constrain|>";
    ids.push(special::START);
    ids.extend(tok.encode(&m.author)?);
    if let Some(r) = m.recipient.as_deref().filter(|r| *r != "all") {
        ids.extend(tok.encode(&format!(" to={r}"))?);
    }
    if let Some(channel) = &m.channel {
        ids.push(special::CHANNEL);
        ids.extend(tok.encode(channel)?);
    }
    if let Some(ct) = &m.content_type {
        match ct.strip_prefix(CONSTRAIN_TEXT) {
            Some(rest) => {
                ids.extend(tok.encode(" ")?);
                ids.push(special::CONSTRAIN);
                ids.extend(tok.encode(rest)?);
            }
            None => ids.extend(tok.encode(&format!(" {ct}"))?),
        }
    }
    ids.push(special::MESSAGE);
    ids.extend(tok.encode(&m.content)?);
    ids.push(if m.author == "assistant" && m.recipient.is_some() {
        special::CALL
    } else {
        special::END
    });
    Ok(())
}

/// The harmony messages of a chat: system message, developer message (instructions from the
/// leading system/developer messages, and the tools), then the conversation, with earlier
/// analysis dropped per [`RenderOptions::auto_drop_analysis`].
pub fn to_harmony_messages(
    messages: &[ChatMessage],
    tools: &[Tool],
    opts: &RenderOptions,
) -> Result<Vec<HarmonyMessage>> {
    check_tools(tools)?;
    let leading = messages
        .iter()
        .take_while(|m| matches!(m.role, Role::System | Role::Developer))
        .count();
    let instructions = messages[..leading]
        .iter()
        .map(ChatMessage::text)
        .collect::<Result<Vec<_>>>()?;

    let mut out = vec![HarmonyMessage::new(
        "system",
        system_text(opts, !tools.is_empty()),
    )];
    let instructions = (!instructions.is_empty()).then(|| instructions.join("\n\n"));
    if instructions.is_some() || !tools.is_empty() {
        out.push(HarmonyMessage::new(
            "developer",
            developer_text(instructions.as_deref(), tools),
        ));
    }
    let mut conversation = Vec::new();
    for (i, m) in messages.iter().enumerate().skip(leading) {
        convert(m, &messages[..i], &mut conversation)
            .map_err(|e| Error::Input(format!("message {i} ({}): {e}", role_name(m.role))))?;
    }
    if opts.auto_drop_analysis {
        drop_analysis(&mut conversation);
    }
    out.extend(conversation);
    Ok(out)
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::Developer => "developer",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    }
}

fn check_tools(tools: &[Tool]) -> Result<()> {
    for t in tools {
        if t.kind != "function" {
            return Err(Error::Input(format!(
                "tool of type '{}' is not supported: only function tools are",
                t.kind
            )));
        }
        let name = &t.function.name;
        if name.is_empty() || name.chars().any(|c| c.is_whitespace()) {
            return Err(Error::Input(format!(
                "tool name '{name}' must be non-empty and without spaces"
            )));
        }
    }
    Ok(())
}

fn system_text(opts: &RenderOptions, function_tools: bool) -> String {
    let mut top = vec![
        opts.model_identity.clone(),
        format!("Knowledge cutoff: {}", opts.knowledge_cutoff),
    ];
    if let Some(date) = &opts.current_date {
        top.push(format!("Current date: {date}"));
    }
    let mut channels =
        "# Valid channels: analysis, commentary, final. Channel must be included for every message.".to_string();
    if function_tools {
        channels.push_str("\nCalls to these tools must go to the commentary channel: 'functions'.");
    }
    [
        top.join("\n"),
        format!("Reasoning: {}", opts.reasoning_effort),
        channels,
    ]
    .join("\n\n")
}

fn developer_text(instructions: Option<&str>, tools: &[Tool]) -> String {
    let mut sections = Vec::new();
    if let Some(text) = instructions {
        sections.push("# Instructions".to_string());
        sections.push(text.to_string());
    }
    if !tools.is_empty() {
        sections.push(tools_section(tools));
    }
    sections.join("\n\n")
}

fn qualified(name: &str) -> String {
    if name.starts_with("functions.") {
        name.to_string()
    } else {
        format!("functions.{name}")
    }
}

/// The function a tool result answers: its `name`, else the earlier call with its id.
fn tool_result_name(m: &ChatMessage, earlier: &[ChatMessage]) -> Result<String> {
    if let Some(name) = m.name.as_deref().filter(|n| !n.is_empty()) {
        return Ok(name.to_string());
    }
    let id = m.tool_call_id.as_deref().ok_or_else(|| {
        Error::Input(
            "a tool result needs `name` or a `tool_call_id` of an earlier assistant tool call"
                .into(),
        )
    })?;
    earlier
        .iter()
        .rev()
        .flat_map(|e| e.tool_calls.iter())
        .find(|c| c.id.as_deref() == Some(id))
        .map(|c| c.function.name.clone())
        .ok_or_else(|| {
            Error::Input(format!(
                "tool_call_id '{id}' matches no earlier assistant tool call; give `name`"
            ))
        })
}

fn convert(m: &ChatMessage, earlier: &[ChatMessage], out: &mut Vec<HarmonyMessage>) -> Result<()> {
    let text = m.text()?;
    match m.role {
        Role::User => out.push(HarmonyMessage::new("user", text)),
        Role::System | Role::Developer => out.push(HarmonyMessage::new(
            "developer",
            developer_text(Some(&text), &[]),
        )),
        Role::Tool => {
            let name = qualified(&tool_result_name(m, earlier)?);
            out.push(
                HarmonyMessage::new(&name, text)
                    .to("assistant")
                    .on("commentary"),
            );
        }
        Role::Assistant => {
            if let Some(r) = m.reasoning_content.as_deref().filter(|r| !r.is_empty()) {
                out.push(HarmonyMessage::new("assistant", r).on("analysis"));
            }
            if m.tool_calls.is_empty() {
                if !text.is_empty() {
                    out.push(HarmonyMessage::new("assistant", text).on("final"));
                }
                return Ok(());
            }
            if !text.is_empty() {
                // Text next to tool calls is a user-visible preamble (commentary channel).
                out.push(HarmonyMessage::new("assistant", text).on("commentary"));
            }
            for call in &m.tool_calls {
                if call.function.name.is_empty() {
                    return Err(Error::Input(
                        "a tool call has an empty function name".into(),
                    ));
                }
                let mut msg = HarmonyMessage::new("assistant", call.function.arguments_text())
                    .to(&qualified(&call.function.name))
                    .on("commentary");
                msg.content_type = Some("<|constrain|>json".to_string());
                out.push(msg);
            }
        }
    }
    Ok(())
}

/// The official renderer's rule: when the last assistant message is on `final`, drop every
/// `analysis` message before the first `final` message.
fn drop_analysis(messages: &mut Vec<HarmonyMessage>) {
    let is = |m: &HarmonyMessage, ch: &str| m.channel.as_deref() == Some(ch);
    let last_assistant_final = messages
        .iter()
        .rev()
        .find(|m| m.author == "assistant")
        .is_some_and(|m| is(m, "final"));
    let Some(first_final) = messages.iter().position(|m| is(m, "final")) else {
        return;
    };
    if !last_assistant_final {
        return;
    }
    let mut idx = 0;
    messages.retain(|m| {
        let keep = !(idx < first_final && is(m, "analysis"));
        idx += 1;
        keep
    });
}
