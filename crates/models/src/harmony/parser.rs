//! Streaming parser of the model's harmony output, fed one token id at a time (spec 7.7).
//!
//! The model's output starts right after the prompt's `<|start|>assistant`, normally with
//! `<|channel|>`. The parser reads each header up to `<|message|>` (recipient before or after
//! the channel, `<|constrain|>json` with or without a space), then streams the content as
//! reasoning (`analysis`), answer (`final`, `commentary` preambles, anything unlabelled) or
//! tool-call arguments (a recipient is set). Control tokens never reach the text; text outside
//! any message is kept as answer text; bytes are held until they form whole UTF-8 characters.

use crate::tokenizer::{special, StreamDecoder, Tokenizer};

/// Why the turn ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// `<|return|>`: the model finished its answer.
    Return,
    /// `<|call|>`: the model called a tool and waits for its result.
    Call,
    /// `<|endoftext|>`.
    EndOfText,
    /// Output ended without a stop token ([`HarmonyParser::finish`]).
    MaxTokens,
}

/// What the parser reports while tokens arrive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HarmonyEvent {
    /// Chain of thought (`analysis` channel); never show it as the answer.
    ReasoningDelta(String),
    /// User-visible text: the `final` answer, `commentary` preambles, text outside messages.
    ContentDelta(String),
    /// A message addressed to a tool begins. `name` is the recipient without `functions.`;
    /// `content_type` is e.g. `json` for `<|constrain|>json`.
    ToolCallStart {
        recipient: String,
        name: String,
        content_type: Option<String>,
    },
    ToolCallArgsDelta(String),
    ToolCallEnd,
    MessageEnd {
        channel: Option<String>,
    },
    Stop(StopReason),
}

/// Headers longer than this (or with a newline) are not headers: the model is writing text.
const MAX_HEADER_BYTES: usize = 256;
/// Stand-ins for `<|channel|>` and `<|constrain|>` inside header text (private-use chars).
const CHANNEL_MARK: char = '\u{E000}';
const CONSTRAIN_MARK: char = '\u{E001}';

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Reasoning,
    Answer,
    ToolCall,
}

#[derive(Debug)]
struct Header {
    bytes: Vec<u8>,
    /// The role/author was written after `<|start|>` (false for the prompt's own
    /// `<|start|>assistant`, or a message begun by a bare `<|channel|>`).
    explicit_author: bool,
    /// A `<|channel|>` or `<|constrain|>` was seen.
    markers: bool,
}

#[derive(Debug)]
enum State {
    Outside(StreamDecoder),
    Header(Header),
    Content {
        kind: Kind,
        channel: Option<String>,
        dec: StreamDecoder,
    },
    Done,
}

/// The parsed header of one message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct ParsedHeader {
    channel: Option<String>,
    recipient: Option<String>,
    content_type: Option<String>,
}

/// Incremental harmony parser; see the module docs.
pub struct HarmonyParser<'t> {
    tok: &'t Tokenizer,
    state: State,
}

impl<'t> HarmonyParser<'t> {
    /// A parser for output that follows a prompt ending in `<|start|>assistant`.
    pub fn new(tok: &'t Tokenizer) -> Self {
        HarmonyParser {
            tok,
            state: State::Header(Header::new(false)),
        }
    }

    /// A parser for output that starts between messages (expects `<|start|>` first).
    pub fn between_messages(tok: &'t Tokenizer) -> Self {
        HarmonyParser {
            tok,
            state: State::Outside(StreamDecoder::new()),
        }
    }

    /// True after a stop token or [`finish`](Self::finish); later tokens are ignored.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Feeds one token id and returns the events it completes.
    pub fn push(&mut self, id: u32) -> Vec<HarmonyEvent> {
        let mut ev = Vec::new();
        if self.is_done() {
            return ev;
        }
        match id {
            special::RETURN => self.stop(StopReason::Return, &mut ev),
            special::CALL => self.stop(StopReason::Call, &mut ev),
            special::ENDOFTEXT => self.stop(StopReason::EndOfText, &mut ev),
            special::END => {
                self.close(&mut ev);
                self.state = State::Outside(StreamDecoder::new());
            }
            special::START => {
                self.close(&mut ev);
                self.state = State::Header(Header::new(true));
            }
            special::CHANNEL => match &mut self.state {
                State::Header(h) => h.mark(CHANNEL_MARK),
                _ => {
                    // A channel outside a header starts a new assistant message.
                    self.close(&mut ev);
                    let mut h = Header::new(false);
                    h.mark(CHANNEL_MARK);
                    self.state = State::Header(h);
                }
            },
            special::CONSTRAIN => {
                if let State::Header(h) = &mut self.state {
                    h.mark(CONSTRAIN_MARK);
                }
            }
            special::MESSAGE => {
                if let State::Header(h) = &self.state {
                    let parsed = parse_header(&h.text(), h.explicit_author);
                    self.begin_content(parsed, &mut ev);
                }
            }
            _ if self.tok.is_special(id) => {} // reserved / unknown control tokens carry no text
            _ => {
                if let Some(bytes) = self.tok.token_bytes(id) {
                    self.text(bytes, &mut ev);
                }
            }
        }
        ev
    }

    /// Ends the output without a stop token (max tokens reached, or the caller stopped):
    /// flushes held text, closes an open message or tool call, reports `Stop(MaxTokens)`.
    pub fn finish(&mut self) -> Vec<HarmonyEvent> {
        let mut ev = Vec::new();
        if !self.is_done() {
            self.stop(StopReason::MaxTokens, &mut ev);
        }
        ev
    }

    fn stop(&mut self, reason: StopReason, ev: &mut Vec<HarmonyEvent>) {
        self.close(ev);
        self.state = State::Done;
        ev.push(HarmonyEvent::Stop(reason));
    }

    /// Ends whatever is open: a message (flush, tool call end, message end), a header that
    /// never got its `<|message|>`, or text between messages.
    fn close(&mut self, ev: &mut Vec<HarmonyEvent>) {
        match std::mem::replace(&mut self.state, State::Done) {
            State::Outside(mut dec) => push_text(ev, Kind::Answer, dec.finish()),
            State::Header(h) => {
                // Plain text the model wrote instead of a header is answer text; a real
                // (partial) header is markup and is dropped.
                if !h.explicit_author && !h.markers {
                    push_text(ev, Kind::Answer, h.text());
                }
            }
            State::Content {
                kind,
                channel,
                mut dec,
            } => {
                push_text(ev, kind, dec.finish());
                if kind == Kind::ToolCall {
                    ev.push(HarmonyEvent::ToolCallEnd);
                }
                ev.push(HarmonyEvent::MessageEnd { channel });
            }
            State::Done => {}
        }
    }

    fn text(&mut self, bytes: &[u8], ev: &mut Vec<HarmonyEvent>) {
        match &mut self.state {
            State::Outside(dec) => push_text(ev, Kind::Answer, dec.push(bytes)),
            State::Content { kind, dec, .. } => push_text(ev, *kind, dec.push(bytes)),
            State::Header(h) => {
                h.bytes.extend_from_slice(bytes);
                if h.bytes.len() > MAX_HEADER_BYTES || h.bytes.contains(&b'\n') {
                    let (channel, rest) = overflow_text(&h.text(), h.explicit_author);
                    self.begin_content(
                        ParsedHeader {
                            channel,
                            ..Default::default()
                        },
                        ev,
                    );
                    if let State::Content { kind, dec, .. } = &mut self.state {
                        push_text(ev, *kind, dec.push(rest.as_bytes()));
                    }
                }
            }
            State::Done => {}
        }
    }

    fn begin_content(&mut self, h: ParsedHeader, ev: &mut Vec<HarmonyEvent>) {
        let kind = match (&h.recipient, h.channel.as_deref()) {
            (Some(recipient), _) => {
                let name = recipient
                    .strip_prefix("functions.")
                    .unwrap_or(recipient)
                    .to_string();
                ev.push(HarmonyEvent::ToolCallStart {
                    recipient: recipient.clone(),
                    name,
                    content_type: h.content_type.clone(),
                });
                Kind::ToolCall
            }
            (None, Some("analysis")) => Kind::Reasoning,
            (None, _) => Kind::Answer,
        };
        self.state = State::Content {
            kind,
            channel: h.channel,
            dec: StreamDecoder::new(),
        };
    }
}

impl Header {
    fn new(explicit_author: bool) -> Self {
        Header {
            bytes: Vec::new(),
            explicit_author,
            markers: false,
        }
    }
    fn mark(&mut self, mark: char) {
        let mut buf = [0u8; 4];
        self.bytes
            .extend_from_slice(mark.encode_utf8(&mut buf).as_bytes());
        self.markers = true;
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

fn push_text(ev: &mut Vec<HarmonyEvent>, kind: Kind, text: String) {
    if text.is_empty() {
        return;
    }
    ev.push(match kind {
        Kind::Reasoning => HarmonyEvent::ReasoningDelta(text),
        Kind::Answer => HarmonyEvent::ContentDelta(text),
        Kind::ToolCall => HarmonyEvent::ToolCallArgsDelta(text),
    });
}

/// Parses header text (with mark chars for the control tokens): the channel follows the
/// channel mark up to whitespace or the next mark; ` to=X` anywhere is the recipient; the
/// word after the constrain mark (or another leftover word) is the content type.
fn parse_header(text: &str, explicit_author: bool) -> ParsedHeader {
    let mut h = ParsedHeader::default();
    let mut s = text.to_string();
    if let Some(at) = s.find(CHANNEL_MARK) {
        let after = &s[at + CHANNEL_MARK.len_utf8()..];
        let end = after
            .find(|c: char| c.is_whitespace() || c == CHANNEL_MARK || c == CONSTRAIN_MARK)
            .unwrap_or(after.len());
        if end > 0 {
            h.channel = Some(after[..end].to_string());
        }
        s = format!("{} {}", &s[..at], &after[end..]);
    }
    let s = s
        .replace(CONSTRAIN_MARK, &format!(" {CONSTRAIN_MARK}"))
        .replace(CHANNEL_MARK, " ");
    let mut parts: Vec<&str> = s.split_whitespace().collect();
    // The author word (explicit after <|start|>, or a repeated "assistant").
    let author_first = parts
        .first()
        .is_some_and(|p| (explicit_author && !p.starts_with("to=")) || *p == "assistant");
    if author_first {
        parts.remove(0);
    }
    for p in parts {
        if let Some(r) = p.strip_prefix("to=") {
            if !r.is_empty() && r != "all" && r != "assistant" {
                h.recipient = Some(r.to_string());
            }
        } else if let Some(ct) = p.strip_prefix(CONSTRAIN_MARK) {
            if !ct.is_empty() {
                h.content_type = Some(ct.to_string());
            }
        } else if p.starts_with("functions.") && h.recipient.is_none() {
            h.recipient = Some(p.to_string());
        } else {
            h.content_type = Some(p.to_string());
        }
    }
    h
}

/// A "header" that turned out to be text: its channel (if a channel mark came first) and the
/// text after the channel name (or after the author word), marks removed, spacing kept.
fn overflow_text(text: &str, explicit_author: bool) -> (Option<String>, String) {
    let is_mark = |c: char| c == CHANNEL_MARK || c == CONSTRAIN_MARK;
    let (channel, rest) = match text.find(CHANNEL_MARK) {
        Some(at) => {
            let after = &text[at + CHANNEL_MARK.len_utf8()..];
            let end = after
                .find(|c: char| c.is_whitespace() || is_mark(c))
                .unwrap_or(after.len());
            (
                Some(after[..end].to_string()).filter(|c| !c.is_empty()),
                after[end..].trim_start_matches(' '),
            )
        }
        None if explicit_author => {
            let t = text.trim_start();
            (
                None,
                t.find(char::is_whitespace)
                    .map_or("", |i| t[i..].trim_start_matches(' ')),
            )
        }
        None => (None, text),
    };
    (channel, rest.chars().filter(|c| !is_mark(*c)).collect())
}

/// Parses a complete output (all ids, then [`HarmonyParser::finish`] when it did not stop).
pub fn parse_completion(tok: &Tokenizer, ids: &[u32]) -> Vec<HarmonyEvent> {
    let mut p = HarmonyParser::new(tok);
    let mut ev: Vec<HarmonyEvent> = ids.iter().flat_map(|&id| p.push(id)).collect();
    ev.extend(p.finish());
    ev
}
