//! The conversation `gptoss chat` keeps: system instructions, messages, tools, reasoning
//! effort; read from and saved as an OpenAI-style chat request (JSON).

use std::path::Path;

use gptoss_core::{Error, Result};
use gptoss_models::harmony::{
    ChatMessage, ChatRequest, ReasoningEffort, RenderOptions, Role, Tool,
};
use gptoss_models::tokenizer::Tokenizer;

#[derive(Debug, Clone, Default)]
pub struct Conversation {
    /// Instructions sent as the first (system) message.
    pub system: Option<String>,
    /// Everything after the system message.
    pub messages: Vec<ChatMessage>,
    pub tools: Vec<Tool>,
    pub effort: ReasoningEffort,
}

impl Conversation {
    pub fn new(effort: ReasoningEffort) -> Self {
        Conversation {
            effort,
            ..Default::default()
        }
    }

    /// Reads a saved conversation (a messages array, or an object with messages, tools and
    /// reasoning_effort). A first system message becomes the instructions.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::file(path, format!("cannot read the conversation: {e}")))?;
        let req = ChatRequest::from_json(&text).map_err(|e| Error::file(path, e.to_string()))?;
        let mut messages = req.messages;
        let mut system = None;
        if messages.first().is_some_and(|m| m.role == Role::System) {
            let first = messages.remove(0);
            system = Some(first.text().map_err(|e| Error::file(path, e.to_string()))?);
        }
        Ok(Conversation {
            system,
            messages,
            tools: req.tools,
            effort: req.reasoning_effort.unwrap_or_default(),
        })
    }

    /// The conversation as a chat request: system message first.
    pub fn to_request(&self) -> ChatRequest {
        let mut messages = Vec::with_capacity(self.messages.len() + 1);
        if let Some(s) = &self.system {
            messages.push(ChatMessage::system(s.clone()));
        }
        messages.extend(self.messages.iter().cloned());
        ChatRequest {
            messages,
            tools: self.tools.clone(),
            reasoning_effort: Some(self.effort),
        }
    }

    /// Writes the conversation as pretty JSON (readable by `--conversation` and by
    /// `gptoss tokenize --messages`).
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(&self.to_request())
            .map_err(|e| Error::Input(format!("cannot encode the conversation: {e}")))?;
        std::fs::write(path, json + "\n")
            .map_err(|e| Error::file(path, format!("cannot write the conversation: {e}")))
    }

    /// The prompt ids for the model's next reply.
    pub fn render(&self, tok: &Tokenizer, opts: &RenderOptions) -> Result<Vec<u32>> {
        let mut opts = opts.clone();
        opts.reasoning_effort = self.effort;
        let req = self.to_request();
        gptoss_models::harmony::render_prompt(tok, &req.messages, &req.tools, &opts)
    }

    /// True when the last message waits for the assistant's reply.
    pub fn awaits_reply(&self) -> bool {
        self.messages
            .last()
            .is_some_and(|m| matches!(m.role, Role::User | Role::Tool))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_and_load_keep_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        let mut c = Conversation::new(ReasoningEffort::High);
        c.system = Some("Be brief.".into());
        c.messages.push(ChatMessage::user("hi"));
        c.messages.push(ChatMessage::assistant("hello"));
        c.save(&path).unwrap();
        let back = Conversation::load(&path).unwrap();
        assert_eq!(back.system.as_deref(), Some("Be brief."));
        assert_eq!(back.messages, c.messages);
        assert_eq!(back.effort, ReasoningEffort::High);
        assert!(!back.awaits_reply());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"role\": \"system\""), "{text}");
    }

    #[test]
    fn bad_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.json");
        std::fs::write(&path, "{\"messages\": 3}").unwrap();
        let e = Conversation::load(&path).unwrap_err().to_string();
        assert!(e.contains("bad.json"), "{e}");
        let e = Conversation::load(&dir.path().join("none.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("none.json"), "{e}");
    }
}
