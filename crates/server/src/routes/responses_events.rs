//! Builds Responses API output items from reply pieces, with the stream events of each step.

use std::sync::Arc;

use serde_json::{json, Value};

use crate::gen::{Finish, Usage};
use crate::output::Piece;
use crate::state::{unix_now, AppState};

enum Open {
    None,
    Reasoning { index: usize, text: String },
    Message { index: usize, text: String },
    Call { index: usize, args: String },
}

pub struct Builder {
    st: Arc<AppState>,
    pub id: String,
    model: String,
    instructions: Option<String>,
    /// The request's tools and tool_choice, echoed in the response object.
    tools: Value,
    tool_choice: Value,
    created: u64,
    items: Vec<Value>,
    open: Open,
    seq: u64,
    /// Events made by [`finish`](Self::finish) (closing the open item).
    pub events: Vec<Value>,
}

impl Builder {
    pub fn new(
        st: Arc<AppState>,
        id: String,
        model: String,
        instructions: Option<String>,
        tools: Value,
        tool_choice: Value,
    ) -> Self {
        Builder {
            st,
            id,
            model,
            instructions,
            tools,
            tool_choice,
            created: unix_now(),
            items: Vec::new(),
            open: Open::None,
            seq: 0,
            events: Vec::new(),
        }
    }

    pub fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq - 1
    }

    /// The response object with the items so far.
    pub fn snapshot(&self, status: &str) -> Value {
        json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "model": self.model,
            "output": self.items,
            "instructions": self.instructions,
            "parallel_tool_calls": true,
            "tool_choice": self.tool_choice,
            "tools": self.tools,
            "error": null,
            "incomplete_details": null,
        })
    }

    fn item_id(&self, index: usize) -> String {
        self.items[index]["id"].as_str().unwrap_or("").to_string()
    }

    fn add(&mut self, item: Value, ev: &mut Vec<Value>) -> usize {
        let index = self.items.len();
        self.items.push(item);
        ev.push(
            json!({"type": "response.output_item.added", "output_index": index,
                       "item": self.items[index]}),
        );
        index
    }

    fn close(&mut self, ev: &mut Vec<Value>) {
        match std::mem::replace(&mut self.open, Open::None) {
            Open::None => return,
            Open::Reasoning { index, text } => {
                let id = self.item_id(index);
                let part = json!({"type": "reasoning_text", "text": text});
                ev.push(
                    json!({"type": "response.reasoning_text.done", "item_id": id,
                    "output_index": index, "content_index": 0, "text": text}),
                );
                ev.push(json!({"type": "response.content_part.done", "item_id": id,
                    "output_index": index, "content_index": 0, "part": part}));
                self.items[index]["content"] = json!([part]);
                self.items[index]["status"] = json!("completed");
                finish_item(self, index, ev);
            }
            Open::Message { index, text } => {
                let id = self.item_id(index);
                let part =
                    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []});
                ev.push(json!({"type": "response.output_text.done", "item_id": id,
                    "output_index": index, "content_index": 0, "text": text, "logprobs": []}));
                ev.push(json!({"type": "response.content_part.done", "item_id": id,
                    "output_index": index, "content_index": 0, "part": part}));
                self.items[index]["content"] = json!([part]);
                self.items[index]["status"] = json!("completed");
                finish_item(self, index, ev);
            }
            Open::Call { index, args } => {
                let id = self.item_id(index);
                let name = self.items[index]["name"].clone();
                ev.push(
                    json!({"type": "response.function_call_arguments.done", "item_id": id,
                    "output_index": index, "name": name, "arguments": args}),
                );
                self.items[index]["arguments"] = json!(args);
                self.items[index]["status"] = json!("completed");
                finish_item(self, index, ev);
            }
        }

        fn finish_item(b: &Builder, index: usize, ev: &mut Vec<Value>) {
            ev.push(
                json!({"type": "response.output_item.done", "output_index": index,
                           "item": b.items[index]}),
            );
        }
    }

    /// One piece of the reply; returns its stream events.
    pub fn push(&mut self, piece: Piece) -> Vec<Value> {
        let mut ev = Vec::new();
        match piece {
            Piece::Reasoning(t) => {
                if !matches!(self.open, Open::Reasoning { .. }) {
                    self.close(&mut ev);
                    let item = json!({"type": "reasoning", "id": self.st.new_id("rs_"),
                        "summary": [], "content": [], "status": "in_progress"});
                    let index = self.add(item, &mut ev);
                    ev.push(json!({"type": "response.content_part.added",
                        "item_id": self.item_id(index), "output_index": index, "content_index": 0,
                        "part": {"type": "reasoning_text", "text": ""}}));
                    self.open = Open::Reasoning {
                        index,
                        text: String::new(),
                    };
                }
                if let Open::Reasoning { index, text } = &mut self.open {
                    text.push_str(&t);
                    let index = *index;
                    ev.push(json!({"type": "response.reasoning_text.delta",
                        "item_id": self.item_id(index), "output_index": index,
                        "content_index": 0, "delta": t}));
                }
            }
            Piece::Content(t) => {
                if !matches!(self.open, Open::Message { .. }) {
                    self.close(&mut ev);
                    let item = json!({"type": "message", "id": self.st.new_id("msg_"),
                        "role": "assistant", "content": [], "status": "in_progress"});
                    let index = self.add(item, &mut ev);
                    ev.push(json!({"type": "response.content_part.added",
                        "item_id": self.item_id(index), "output_index": index, "content_index": 0,
                        "part": {"type": "output_text", "text": "", "annotations": []}}));
                    self.open = Open::Message {
                        index,
                        text: String::new(),
                    };
                }
                if let Open::Message { index, text } = &mut self.open {
                    text.push_str(&t);
                    let index = *index;
                    ev.push(json!({"type": "response.output_text.delta",
                        "item_id": self.item_id(index), "output_index": index,
                        "content_index": 0, "delta": t, "logprobs": []}));
                }
            }
            Piece::ToolStart { id, name, .. } => {
                self.close(&mut ev);
                let item = json!({"type": "function_call", "id": self.st.new_id("fc_"),
                    "call_id": id, "name": name, "arguments": "", "status": "in_progress"});
                let index = self.add(item, &mut ev);
                self.open = Open::Call {
                    index,
                    args: String::new(),
                };
            }
            Piece::ToolArgs { text, .. } => {
                if let Open::Call { index, args } = &mut self.open {
                    args.push_str(&text);
                    let index = *index;
                    ev.push(json!({"type": "response.function_call_arguments.delta",
                        "item_id": self.item_id(index), "output_index": index, "delta": text}));
                }
            }
            Piece::ToolEnd { .. } => self.close(&mut ev),
        }
        ev
    }

    /// Closes the open item; returns the final response object (closing events in `events`).
    pub fn finish(&mut self, finish: Finish, u: Usage) -> Value {
        let mut ev = Vec::new();
        self.close(&mut ev);
        self.events = ev;
        let complete = finish != Finish::Length;
        let mut r = self.snapshot(if complete { "completed" } else { "incomplete" });
        if !complete {
            r["incomplete_details"] = json!({"reason": "max_output_tokens"});
        }
        r["usage"] = json!({
            "input_tokens": u.prompt,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": u.completion,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": u.prompt + u.completion,
        });
        r
    }
}
