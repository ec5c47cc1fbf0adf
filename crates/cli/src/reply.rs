//! Printing a reply while it streams: harmony output (answer, reasoning, tool calls) through
//! [`ReplyPrinter`], plain completions through [`RawPrinter`]. Markup never reaches the
//! answer; stop strings are cut from it.

use std::io::Write;

use gptoss_models::harmony::{AssistantTurn, HarmonyEvent, HarmonyParser};
use gptoss_models::sampler::StopStrings;
use gptoss_models::tokenizer::{StreamDecoder, Tokenizer};

use crate::textgen::Flow;

const DIM: &str = "\x1b[2m";
const RESET: &str = "\x1b[0m";

/// Where a piece of output goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Stdout,
    Stderr,
}

impl Target {
    pub fn write(self, text: &str) {
        // A closed pipe is not worth a panic; the loop ends on its own.
        let _ = match self {
            Target::Stdout => {
                let mut o = std::io::stdout().lock();
                o.write_all(text.as_bytes()).and_then(|_| o.flush())
            }
            Target::Stderr => {
                let mut o = std::io::stderr().lock();
                o.write_all(text.as_bytes()).and_then(|_| o.flush())
            }
        };
    }
}

/// How reasoning (the analysis channel) is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reasoning {
    /// Not at all.
    Hidden,
    /// Streamed, dimmed (or marked `[reasoning]` without ANSI).
    Shown,
    /// One dimmed line saying that the model is thinking, and how much it wrote.
    Collapsed,
}

/// Output options of a [`ReplyPrinter`].
#[derive(Debug, Clone, Copy)]
pub struct View {
    /// Where the answer goes.
    pub answer: Target,
    /// Where reasoning and tool calls go.
    pub side: Target,
    /// ANSI styling on `side`.
    pub ansi: bool,
    pub reasoning: Reasoning,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Nothing,
    Reasoning,
    Answer,
    Tool,
}

/// Feeds generated ids through the harmony parser and prints the events.
pub struct ReplyPrinter<'t> {
    parser: HarmonyParser<'t>,
    stops: StopStrings,
    view: View,
    turn: AssistantTurn,
    open: Open,
    reasoning_chars: usize,
    /// The answer has text and the last answer message ended: separate the next one.
    answer_break: bool,
    answer_ends_in_newline: bool,
    wrote_answer: bool,
}

impl<'t> ReplyPrinter<'t> {
    pub fn new(tok: &'t Tokenizer, stop: &[String], view: View) -> Self {
        ReplyPrinter {
            parser: HarmonyParser::new(tok),
            stops: StopStrings::new(stop),
            view,
            turn: AssistantTurn::new(),
            open: Open::Nothing,
            reasoning_chars: 0,
            answer_break: false,
            answer_ends_in_newline: false,
            wrote_answer: false,
        }
    }

    /// True once a stop string was reached.
    pub fn stopped(&self) -> bool {
        self.stops.is_stopped()
    }

    /// One generated id.
    pub fn push(&mut self, id: u32) -> Flow {
        for e in self.parser.push(id) {
            self.event(e);
        }
        if self.stopped() {
            Flow::Stop
        } else {
            Flow::Continue
        }
    }

    /// Ends the reply (whatever stopped it): flushes held text, closes open blocks, and
    /// returns the turn as the user saw it (answer cut at a stop string).
    pub fn finish(mut self) -> AssistantTurn {
        for e in self.parser.finish() {
            self.event(e);
        }
        let held = self.stops.finish();
        if !held.is_empty() {
            self.answer_text(&held);
        }
        self.close();
        if self.wrote_answer && !self.answer_ends_in_newline {
            self.view.answer.write("\n");
        }
        self.turn
    }

    fn event(&mut self, e: HarmonyEvent) {
        match &e {
            HarmonyEvent::ContentDelta(t) => {
                if self.stops.is_stopped() {
                    return;
                }
                let check = self.stops.push(t);
                if !check.emit.is_empty() {
                    self.answer_text(&check.emit);
                }
            }
            HarmonyEvent::ReasoningDelta(t) => {
                self.turn.push(&e);
                self.reasoning(t);
            }
            HarmonyEvent::ToolCallStart { recipient, .. } => {
                self.turn.push(&e);
                self.close();
                self.side(&format!("[tool call] {recipient} "));
                self.open = Open::Tool;
            }
            HarmonyEvent::ToolCallArgsDelta(t) => {
                self.turn.push(&e);
                self.side(t);
            }
            HarmonyEvent::ToolCallEnd => {
                self.turn.push(&e);
                self.close();
            }
            HarmonyEvent::MessageEnd { .. } => {
                if self.open == Open::Answer {
                    self.answer_break = true;
                }
                self.close();
            }
            HarmonyEvent::Stop(_) => self.turn.push(&e),
        }
    }

    fn answer_text(&mut self, text: &str) {
        if self.open != Open::Answer {
            self.close();
        }
        if self.answer_break && !self.answer_ends_in_newline {
            self.view.answer.write("\n");
            self.turn.content.push('\n');
        }
        self.answer_break = false;
        self.open = Open::Answer;
        self.view.answer.write(text);
        self.turn
            .push(&HarmonyEvent::ContentDelta(text.to_string()));
        self.wrote_answer = true;
        self.answer_ends_in_newline = text.ends_with('\n');
    }

    fn reasoning(&mut self, text: &str) {
        let opening = self.open != Open::Reasoning;
        if opening {
            self.close();
            self.open = Open::Reasoning;
            self.reasoning_chars = 0;
        }
        self.reasoning_chars += text.chars().count();
        match self.view.reasoning {
            Reasoning::Hidden => {}
            Reasoning::Shown => {
                if opening && !self.view.ansi {
                    self.view.side.write("[reasoning] ");
                }
                self.side(text);
            }
            Reasoning::Collapsed => {
                if opening {
                    self.side("▸ thinking…");
                }
            }
        }
    }

    /// Dimmed text on the side stream.
    fn side(&self, text: &str) {
        if self.view.ansi {
            self.view.side.write(&format!("{DIM}{text}{RESET}"));
        } else {
            self.view.side.write(text);
        }
    }

    /// Ends the open block with a line break where it needs one.
    fn close(&mut self) {
        match self.open {
            Open::Reasoning => match self.view.reasoning {
                Reasoning::Hidden => {}
                Reasoning::Shown => self.view.side.write("\n"),
                Reasoning::Collapsed => {
                    let n = self.reasoning_chars;
                    self.side(&format!(
                        " {n} characters of reasoning hidden (/think on shows them)"
                    ));
                    self.view.side.write("\n");
                }
            },
            Open::Tool => self.view.side.write("\n"),
            // Something else is about to share the answer's line: break it.
            Open::Answer if self.view.answer == self.view.side && !self.answer_ends_in_newline => {
                self.view.answer.write("\n");
                self.answer_ends_in_newline = true;
            }
            Open::Answer | Open::Nothing => {}
        }
        self.open = Open::Nothing;
    }
}

/// Plain completion: decoded text as it comes, stop strings cut.
pub struct RawPrinter<'t> {
    tok: &'t Tokenizer,
    dec: StreamDecoder,
    stops: StopStrings,
    text: String,
}

impl<'t> RawPrinter<'t> {
    pub fn new(tok: &'t Tokenizer, stop: &[String]) -> Self {
        RawPrinter {
            tok,
            dec: StreamDecoder::new(),
            stops: StopStrings::new(stop),
            text: String::new(),
        }
    }

    pub fn push(&mut self, id: u32) -> Flow {
        let bytes = self.tok.token_bytes(id).unwrap_or_default().to_vec();
        let text = self.dec.push(&bytes);
        self.emit(&text);
        if self.stops.is_stopped() {
            Flow::Stop
        } else {
            Flow::Continue
        }
    }

    fn emit(&mut self, text: &str) {
        if text.is_empty() || self.stops.is_stopped() {
            return;
        }
        let check = self.stops.push(text);
        Target::Stdout.write(&check.emit);
        self.text.push_str(&check.emit);
    }

    /// Flushes held bytes and text; returns everything printed.
    pub fn finish(mut self) -> String {
        let rest = self.dec.finish();
        self.emit(&rest);
        if !self.stops.is_stopped() {
            let held = self.stops.finish();
            Target::Stdout.write(&held);
            self.text.push_str(&held);
        }
        if !self.text.is_empty() && !self.text.ends_with('\n') {
            Target::Stdout.write("\n");
        }
        self.text
    }
}
