//! `tool_choice` of both generation APIs, and how "required" and a named function are
//! enforced while the model writes.
//!
//! "none" hides the tools from the model and "auto" leaves the choice to it. "required" and a
//! named function ({"type":"function","function":{"name":…}} in chat completions,
//! {"type":"function","name":…} in responses) keep every tool in the prompt and constrain
//! decoding with a [`CallConstraint`]: the reply may open with one reasoning message
//! (`<|channel|>analysis<|message|>…<|end|>`), and its next message must be a call of an
//! allowed function (any tool for "required", the named one otherwise):
//! `<|start|>assistant<|channel|>commentary to=functions.NAME <|constrain|>json<|message|>
//! ARGS<|call|>` (or the same header with the recipient before the channel, as the harmony
//! renderer writes it). While a header is written, only tokens that keep it a prefix of an
//! allowed header may be sampled (so the model still picks the tokenization and, for
//! "required", the function); inside the reasoning no control token but `<|end|>`, inside
//! the arguments none but `<|call|>`. The harmony parser then reads the call like any other:
//! tool_calls with the model's arguments, finish_reason "tool_calls". A reply cut by
//! max_tokens before the call has none.

use gptoss_models::harmony::Tool;
use gptoss_models::tokenizer::{Tokenizer, CALL, CHANNEL, CONSTRAIN, END, MESSAGE, START};
use serde_json::Value;

use crate::error::ApiError;

/// Applies `tool_choice`: the tools the model is told about, and the functions the reply
/// must call (None: the model may answer without calling one).
pub fn apply_tool_choice(
    choice: Option<&Value>,
    tools: Vec<Tool>,
) -> Result<(Vec<Tool>, Option<Vec<String>>), ApiError> {
    let bad = |m: String| ApiError::bad_request(m).param("tool_choice");
    match choice {
        None | Some(Value::Null) => Ok((tools, None)),
        Some(Value::String(s)) => match s.as_str() {
            "none" => Ok((Vec::new(), None)),
            "auto" => Ok((tools, None)),
            "required" if tools.is_empty() => Err(bad(
                "tool_choice is 'required' but no tools were given".into(),
            )),
            "required" => {
                let names = tools.iter().map(|t| t.function.name.clone()).collect();
                Ok((tools, Some(names)))
            }
            other => Err(bad(format!(
                "tool_choice must be 'none', 'auto', 'required' or a function, not '{other}'"
            ))),
        },
        Some(obj @ Value::Object(_)) => {
            let name = obj
                .pointer("/function/name")
                .or_else(|| obj.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| bad("tool_choice object needs function.name".into()))?;
            if !tools.iter().any(|t| t.function.name == name) {
                return Err(bad(format!(
                    "tool_choice names function '{name}', which is not in tools"
                )));
            }
            let names = vec![name.to_string()];
            Ok((tools, Some(names)))
        }
        Some(other) => Err(bad(format!(
            "tool_choice must be a string or an object, not {other}"
        ))),
    }
}

/// One unit of header text: a byte of ordinary text, or a control token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Byte(u8),
    Special(u32),
}

fn text(s: &str) -> impl Iterator<Item = Unit> + '_ {
    s.bytes().map(Unit::Byte)
}

/// What follows a completed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    Reasoning,
    Arguments,
}

#[derive(Debug, Clone)]
enum Phase {
    /// A header is being written: `written` must stay a prefix of one of `headers`.
    Header {
        headers: Vec<(Vec<Unit>, Body)>,
        written: Vec<Unit>,
    },
    /// Reasoning text, until `<|end|>`.
    Reasoning,
    /// Call arguments, until `<|call|>`.
    Arguments,
    /// Nothing more to enforce (the call was made, or the output left the allowed path).
    Done,
}

/// Token-level enforcement of a function call (see the module docs). The engine calls
/// [`mask`](Self::mask) on the logits before each draw and [`push`](Self::push) with the
/// token drawn.
#[derive(Debug, Clone)]
pub struct CallConstraint {
    tok: &'static Tokenizer,
    names: Vec<String>,
    /// The tokenizer's control tokens (banned in free text but for the message's end).
    specials: Vec<u32>,
    phase: Phase,
}

impl CallConstraint {
    /// For output that follows a prompt ending in `<|start|>assistant`; `names` are the
    /// functions the call may go to (at least one).
    pub fn new(tok: &'static Tokenizer, names: Vec<String>) -> Self {
        let analysis: Vec<Unit> = [Unit::Special(CHANNEL)]
            .into_iter()
            .chain(text("analysis"))
            .chain([Unit::Special(MESSAGE)])
            .collect();
        let mut headers = vec![(analysis, Body::Reasoning)];
        headers.extend(call_headers(&names, &[]));
        let specials = (0..tok.vocab_size() as u32)
            .filter(|&id| tok.is_special(id))
            .collect();
        CallConstraint {
            tok,
            names,
            specials,
            phase: Phase::Header {
                headers,
                written: Vec::new(),
            },
        }
    }

    /// True once nothing more is enforced.
    pub fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Done)
    }

    /// Sets the logit of every token that may not come next to -inf.
    pub fn mask(&mut self, logits: &mut [f32]) {
        let allowed_special = match &self.phase {
            Phase::Done => return,
            Phase::Reasoning => END,
            Phase::Arguments => CALL,
            Phase::Header { headers, written } => {
                let keep = allowed_in_header(self.tok, headers, written, logits.len());
                if keep.is_empty() {
                    // Nothing the vocabulary can write fits (cannot happen with the harmony
                    // tokenizer): stop enforcing rather than block the reply.
                    self.phase = Phase::Done;
                    return;
                }
                let kept: Vec<f32> = keep.iter().map(|&id| logits[id as usize]).collect();
                logits.fill(f32::NEG_INFINITY);
                for (&id, l) in keep.iter().zip(kept) {
                    logits[id as usize] = l;
                }
                return;
            }
        };
        // Free text: ban the control tokens (and ids the tokenizer does not know) except the
        // one that ends this message.
        for &id in &self.specials {
            if id != allowed_special {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        if let Some(unknown) = logits.get_mut(self.tok.vocab_size()..) {
            unknown.fill(f32::NEG_INFINITY);
        }
    }

    /// Advances past the token drawn.
    pub fn push(&mut self, id: u32) {
        match &mut self.phase {
            Phase::Done => {}
            Phase::Reasoning => {
                if id == END {
                    let after: Vec<Unit> = [Unit::Special(START)]
                        .into_iter()
                        .chain(text("assistant"))
                        .collect();
                    self.phase = Phase::Header {
                        headers: call_headers(&self.names, &after),
                        written: Vec::new(),
                    };
                }
            }
            Phase::Arguments => {
                if id == CALL {
                    self.phase = Phase::Done;
                }
            }
            Phase::Header { headers, written } => {
                match units(self.tok, id) {
                    Some(u) => written.extend(u),
                    None => {
                        self.phase = Phase::Done;
                        return;
                    }
                }
                if let Some((_, body)) = headers.iter().find(|(h, _)| h == written) {
                    self.phase = match body {
                        Body::Reasoning => Phase::Reasoning,
                        Body::Arguments => Phase::Arguments,
                    };
                } else if !headers.iter().any(|(h, _)| h.starts_with(written)) {
                    self.phase = Phase::Done; // not masked by us: stop enforcing
                }
            }
        }
    }
}

/// The headers of a call to each of `names`, after `prefix`: the channel first (as gpt-oss
/// writes it) or the recipient first (as the harmony renderer writes history).
fn call_headers(names: &[String], prefix: &[Unit]) -> Vec<(Vec<Unit>, Body)> {
    let mut out = Vec::new();
    for name in names {
        let channel_first: Vec<Unit> = prefix
            .iter()
            .copied()
            .chain([Unit::Special(CHANNEL)])
            .chain(text(&format!("commentary to=functions.{name} ")))
            .chain([Unit::Special(CONSTRAIN)])
            .chain(text("json"))
            .chain([Unit::Special(MESSAGE)])
            .collect();
        let recipient_first: Vec<Unit> = prefix
            .iter()
            .copied()
            .chain(text(&format!(" to=functions.{name}")))
            .chain([Unit::Special(CHANNEL)])
            .chain(text("commentary "))
            .chain([Unit::Special(CONSTRAIN)])
            .chain(text("json"))
            .chain([Unit::Special(MESSAGE)])
            .collect();
        out.push((channel_first, Body::Arguments));
        out.push((recipient_first, Body::Arguments));
    }
    out
}

/// The units a token writes (None for an id outside the vocabulary).
fn units(tok: &Tokenizer, id: u32) -> Option<Vec<Unit>> {
    if tok.is_special(id) {
        return Some(vec![Unit::Special(id)]);
    }
    Some(
        tok.token_bytes(id)?
            .iter()
            .map(|&b| Unit::Byte(b))
            .collect(),
    )
}

/// The ids below `n` whose units keep `written` a prefix of one of `headers`.
fn allowed_in_header(
    tok: &Tokenizer,
    headers: &[(Vec<Unit>, Body)],
    written: &[Unit],
    n: usize,
) -> Vec<u32> {
    let rests: Vec<&[Unit]> = headers
        .iter()
        .filter_map(|(h, _)| h.strip_prefix(written))
        .filter(|r| !r.is_empty())
        .collect();
    let mut first_byte = [false; 256];
    let mut specials = Vec::new();
    for r in &rests {
        match r[0] {
            Unit::Byte(b) => first_byte[b as usize] = true,
            Unit::Special(s) => specials.push(s),
        }
    }
    let n = n.min(tok.vocab_size());
    let mut keep = Vec::new();
    for id in 0..n as u32 {
        if tok.is_special(id) {
            if specials.contains(&id) {
                keep.push(id);
            }
            continue;
        }
        let Some(bytes) = tok.token_bytes(id) else {
            continue;
        };
        if bytes.is_empty() || !first_byte[bytes[0] as usize] {
            continue;
        }
        let fits = |r: &&[Unit]| {
            r.len() >= bytes.len() && r.iter().zip(bytes).all(|(u, &b)| *u == Unit::Byte(b))
        };
        if rests.iter().any(fits) {
            keep.push(id);
        }
    }
    keep
}

/// The engine's hook: every draw of a constrained request goes through the constraint
/// (gptoss_models::generation samples; this only masks and follows).
impl gptoss_models::generation::LogitsMask for CallConstraint {
    fn mask(&mut self, logits: &mut [f32]) {
        CallConstraint::mask(self, logits);
    }
    fn accept(&mut self, id: u32) {
        self.push(id);
    }
}
