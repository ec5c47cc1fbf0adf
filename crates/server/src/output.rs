//! The model's harmony output as API pieces: reasoning text, answer text (stop strings cut),
//! and tool calls (id, name, argument text). No markup reaches any piece: the harmony parser
//! of gptoss-models removes it.

use gptoss_models::harmony::{HarmonyEvent, HarmonyParser};
use gptoss_models::sampler::StopStrings;
use gptoss_models::tokenizer::Tokenizer;

#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Reasoning(String),
    Content(String),
    ToolStart {
        index: usize,
        id: String,
        name: String,
    },
    ToolArgs {
        index: usize,
        text: String,
    },
    ToolEnd {
        index: usize,
    },
}

/// One finished tool call.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Call {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// Everything the reply held, for non-streamed answers and the stored history.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Reply {
    pub reasoning: String,
    pub content: String,
    pub calls: Vec<Call>,
}

pub struct OutputMapper {
    parser: HarmonyParser<'static>,
    stops: StopStrings,
    open_tool: Option<usize>,
    pub reply: Reply,
    new_call_id: Box<dyn FnMut() -> String + Send>,
}

impl OutputMapper {
    pub fn new(
        tok: &'static Tokenizer,
        stop: &[String],
        new_call_id: Box<dyn FnMut() -> String + Send>,
    ) -> Self {
        OutputMapper {
            parser: HarmonyParser::new(tok),
            stops: StopStrings::new(stop),
            open_tool: None,
            reply: Reply::default(),
            new_call_id,
        }
    }

    /// True once a stop string was reached (generation should end).
    pub fn stopped(&self) -> bool {
        self.stops.is_stopped()
    }

    pub fn push(&mut self, id: u32) -> Vec<Piece> {
        let events = self.parser.push(id);
        self.map(events)
    }

    /// Ends the reply: flushes held text and closes an open tool call.
    pub fn finish(&mut self) -> Vec<Piece> {
        let events = self.parser.finish();
        let mut out = self.map(events);
        if !self.stops.is_stopped() {
            let held = self.stops.finish();
            if !held.is_empty() {
                self.reply.content.push_str(&held);
                out.push(Piece::Content(held));
            }
        }
        if let Some(index) = self.open_tool.take() {
            out.push(Piece::ToolEnd { index });
        }
        out
    }

    fn map(&mut self, events: Vec<HarmonyEvent>) -> Vec<Piece> {
        let mut out = Vec::new();
        for e in events {
            match e {
                HarmonyEvent::ReasoningDelta(t) => {
                    self.reply.reasoning.push_str(&t);
                    out.push(Piece::Reasoning(t));
                }
                HarmonyEvent::ContentDelta(t) => {
                    if self.stops.is_stopped() {
                        continue;
                    }
                    let check = self.stops.push(&t);
                    if !check.emit.is_empty() {
                        self.reply.content.push_str(&check.emit);
                        out.push(Piece::Content(check.emit));
                    }
                }
                HarmonyEvent::ToolCallStart { name, .. } => {
                    if let Some(index) = self.open_tool.take() {
                        out.push(Piece::ToolEnd { index });
                    }
                    let index = self.reply.calls.len();
                    let id = (self.new_call_id)();
                    self.reply.calls.push(Call {
                        id: id.clone(),
                        name: name.clone(),
                        arguments: String::new(),
                    });
                    self.open_tool = Some(index);
                    out.push(Piece::ToolStart { index, id, name });
                }
                HarmonyEvent::ToolCallArgsDelta(text) => {
                    if let Some(index) = self.open_tool {
                        self.reply.calls[index].arguments.push_str(&text);
                        out.push(Piece::ToolArgs { index, text });
                    }
                }
                HarmonyEvent::ToolCallEnd => {
                    if let Some(index) = self.open_tool.take() {
                        out.push(Piece::ToolEnd { index });
                    }
                }
                HarmonyEvent::MessageEnd { .. } | HarmonyEvent::Stop(_) => {}
            }
        }
        out
    }
}
