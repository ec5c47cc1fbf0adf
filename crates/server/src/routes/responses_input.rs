//! Responses API input (a string, or items: messages, reasoning, function_call,
//! function_call_output) and tools, as chat messages and chat tools for the renderer.

use gptoss_models::harmony::{ChatMessage, JsonValue, MessageContent, Role, Tool};
use serde::Deserialize;
use serde_json::Value;

use crate::error::ApiError;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Input {
    Text(String),
    Items(Vec<Value>),
}

/// A Responses tool: `{"type": "function", "name", "description", "parameters"}`.
#[derive(Debug, Deserialize, serde::Serialize)]
pub struct RespTool {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<JsonValue>,
}

pub fn tools(list: Vec<RespTool>) -> Result<Vec<Tool>, ApiError> {
    list.into_iter()
        .map(|t| {
            if t.kind != "function" {
                return Err(ApiError::bad_request(format!(
                    "tools of type '{}' are not supported; only 'function'",
                    t.kind
                ))
                .param("tools"));
            }
            let name = t.name.ok_or_else(|| {
                ApiError::bad_request("a function tool needs a name").param("tools")
            })?;
            let mut tool = Tool::function(name, t.description.unwrap_or_default(), t.parameters);
            if tool.function.description.as_deref() == Some("") {
                tool.function.description = None;
            }
            Ok(tool)
        })
        .collect()
}

fn text_of(content: Option<&Value>, at: usize) -> Result<String, ApiError> {
    let bad = |m: String| ApiError::bad_request(format!("input[{at}]: {m}")).param("input");
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut out = String::new();
            for p in parts {
                let kind = p.get("type").and_then(Value::as_str).unwrap_or("");
                match (kind, p.get("text").and_then(Value::as_str)) {
                    ("input_text" | "output_text" | "text" | "reasoning_text", Some(t)) => {
                        out.push_str(t)
                    }
                    _ => {
                        return Err(bad(format!(
                            "content parts of type '{kind}' are not supported: text only"
                        )))
                    }
                }
            }
            Ok(out)
        }
        Some(other) => Err(bad(format!(
            "content must be a string or an array, not {other}"
        ))),
    }
}

fn str_field<'a>(item: &'a Value, key: &str, at: usize) -> Result<&'a str, ApiError> {
    item.get(key).and_then(Value::as_str).ok_or_else(|| {
        ApiError::bad_request(format!("input[{at}]: '{key}' must be a string")).param("input")
    })
}

/// The last message if it is an assistant's that can still take reasoning or a tool call.
fn open_assistant(out: &mut [ChatMessage]) -> Option<&mut ChatMessage> {
    out.last_mut().filter(|m| m.role == Role::Assistant)
}

pub fn messages(input: Input) -> Result<Vec<ChatMessage>, ApiError> {
    let items = match input {
        Input::Text(t) => return Ok(vec![ChatMessage::user(t)]),
        Input::Items(items) => items,
    };
    let mut out: Vec<ChatMessage> = Vec::new();
    for (at, item) in items.iter().enumerate() {
        if !item.is_object() {
            return Err(
                ApiError::bad_request(format!("input[{at}] must be an object")).param("input"),
            );
        }
        let kind = item
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("message");
        match kind {
            "message" => {
                let role: Role =
                    serde_json::from_value(item.get("role").cloned().unwrap_or(Value::Null))
                        .map_err(|_| {
                            ApiError::bad_request(format!(
                                "input[{at}]: role must be user, assistant, system or developer"
                            ))
                            .param("input")
                        })?;
                let text = text_of(item.get("content"), at)?;
                match open_assistant(&mut out) {
                    // Reasoning (and nothing else) came first: this is the same turn's answer.
                    Some(m)
                        if role == Role::Assistant
                            && m.content.is_none()
                            && m.tool_calls.is_empty() =>
                    {
                        m.content = Some(MessageContent::Text(text))
                    }
                    _ => {
                        let mut m = ChatMessage::user(text);
                        m.role = role;
                        out.push(m);
                    }
                }
            }
            "reasoning" => {
                let mut text = text_of(item.get("content"), at)?;
                if text.is_empty() {
                    if let Some(Value::Array(s)) = item.get("summary") {
                        text = text_of(Some(&Value::Array(s.clone())), at).unwrap_or_default();
                    }
                }
                let mut m = ChatMessage::assistant("");
                m.content = None;
                out.push(m.with_reasoning(text));
            }
            "function_call" => {
                let call_id = str_field(item, "call_id", at)?;
                let name = str_field(item, "name", at)?;
                let args = item
                    .get("arguments")
                    .and_then(Value::as_str)
                    .unwrap_or("{}");
                match open_assistant(&mut out) {
                    Some(m) if m.content.is_none() => {
                        let taken = std::mem::replace(m, ChatMessage::assistant(""));
                        *m = taken.with_tool_call(Some(call_id), name, args);
                    }
                    _ => {
                        let mut m = ChatMessage::assistant("");
                        m.content = None;
                        out.push(m.with_tool_call(Some(call_id), name, args));
                    }
                }
            }
            "function_call_output" => {
                let call_id = str_field(item, "call_id", at)?;
                let output = match item.get("output") {
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => text_of(Some(other), at)?,
                    None => String::new(),
                };
                let mut m = ChatMessage::user(output);
                m.role = Role::Tool;
                m.tool_call_id = Some(call_id.to_string());
                out.push(m);
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "input[{at}]: items of type '{other}' are not supported"
                ))
                .param("input"))
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn items_become_chat_messages() {
        let items: Input = serde_json::from_value(json!([
            {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
            {"type": "reasoning", "content": [{"type": "reasoning_text", "text": "Call it."}]},
            {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "21C"},
            {"type": "message", "role": "assistant", "content": "It is 21C."},
        ]))
        .unwrap();
        let m = messages(items).unwrap();
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].role, Role::User);
        assert_eq!(m[0].text().unwrap(), "Weather?");
        assert_eq!(m[1].reasoning_content.as_deref(), Some("Call it."));
        assert_eq!(m[1].tool_calls[0].id.as_deref(), Some("c1"));
        assert_eq!(m[2].role, Role::Tool);
        assert_eq!(m[2].tool_call_id.as_deref(), Some("c1"));
        assert_eq!(m[3].text().unwrap(), "It is 21C.");
    }

    #[test]
    fn bad_items_are_400s() {
        for bad in [
            json!([{"type": "bogus"}]),
            json!([5]),
            json!([{"role": "wizard"}]),
        ] {
            let input: Input = serde_json::from_value(bad).unwrap();
            assert_eq!(messages(input).unwrap_err().status, 400);
        }
        let t = vec![RespTool {
            kind: "web_search".into(),
            name: None,
            description: None,
            parameters: None,
        }];
        assert_eq!(tools(t).unwrap_err().status, 400);
    }
}
