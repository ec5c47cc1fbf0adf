//! `gptoss chat`: an interactive conversation. Replies stream; reasoning is dimmed and
//! collapsed unless /think on; Ctrl-C stops a reply and keeps the REPL; Ctrl-D or /quit leaves.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::Args as ClapArgs;
use gptoss_core::config::EngineConfig;
use gptoss_core::{Error, Result};
use gptoss_models::harmony::{ChatMessage, ReasoningEffort, RenderOptions};
use gptoss_models::sampler::Sampler;
use gptoss_models::tokenizer::{Tokenizer, STOP_TOKENS};
use gptoss_models::Model;

use crate::chat_state::Conversation;
use crate::common::ModelArgs;
use crate::reply::{Reasoning, ReplyPrinter, Target, View};
use crate::text_args::{PromptArgs, SamplingArgs};
use crate::textgen::{self, End};

const HELP: &str = "commands:
  /think on|off          show the model's reasoning (dimmed) or collapse it to one line
  /reasoning low|medium|high   how much the model reasons before answering
  /system TEXT           set the system instructions (/system alone clears them)
  /reset                 forget the conversation (the system instructions stay)
  /save FILE             write the conversation as OpenAI messages JSON
  /quit                  leave (Ctrl-D too); Ctrl-C stops a reply";

#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Start from a saved conversation (JSON: OpenAI messages, or an object with messages,
    /// tools and reasoning_effort, as /save writes). If it ends with a user message, the
    /// model answers it first.
    #[arg(long, value_name = "FILE.json")]
    pub conversation: Option<PathBuf>,
    /// System instructions for the conversation.
    #[arg(long)]
    pub system: Option<String>,
    /// Show reasoning from the start (same as /think on).
    #[arg(long)]
    pub show_reasoning: bool,
    /// Most new tokens per reply.
    #[arg(long, default_value_t = 4096)]
    pub max_tokens: usize,
    #[command(flatten)]
    pub prompt: PromptArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

struct Chat {
    tok: Tokenizer,
    model: Model,
    cfg: EngineConfig,
    sampler: Sampler,
    conv: Conversation,
    opts: RenderOptions,
    think: bool,
    max_tokens: usize,
    stop: Vec<String>,
    ansi: bool,
    generating: Arc<AtomicBool>,
    interrupt: Arc<AtomicBool>,
}

pub fn run(a: Args) -> Result<()> {
    if a.max_tokens == 0 {
        return Err(Error::Input("--max-tokens must be at least 1".into()));
    }
    let dir = gptoss_models::hub::resolve_model_dir(&a.model.model)?;
    let tok = textgen::load_tokenizer(&dir)?;
    let mut conv = match &a.conversation {
        Some(path) => Conversation::load(path)?,
        None => Conversation::new(ReasoningEffort::default()),
    };
    if let Some(e) = a.prompt.reasoning_effort {
        conv.effort = e;
    }
    if let Some(s) = &a.system {
        conv.system = Some(s.clone());
    }
    let opts = a.prompt.render_options();
    // Refuse a model that cannot read the chat format before loading its weights.
    let config = gptoss_models::GptOssConfig::load(&dir)?;
    textgen::check_vocab(&conv.render(&tok, &opts)?, &config, &tok)?;
    let sampler = Sampler::new(a.sampling.params(1.0)?)?;
    let (model, cfg) = a.model.load()?;

    let generating = Arc::new(AtomicBool::new(false));
    let interrupt = Arc::new(AtomicBool::new(false));
    {
        let (generating, interrupt) = (generating.clone(), interrupt.clone());
        ctrlc::set_handler(move || {
            if generating.load(Ordering::SeqCst) {
                interrupt.store(true, Ordering::SeqCst);
            } else {
                Target::Stdout.write("\n(Ctrl-C stops a reply; /quit or Ctrl-D leaves)\n> ");
            }
        })
        .map_err(|e| Error::Input(format!("cannot catch Ctrl-C: {e}")))?;
    }
    let mut chat = Chat {
        tok,
        model,
        cfg,
        sampler,
        conv,
        opts,
        think: a.show_reasoning,
        max_tokens: a.max_tokens,
        stop: a.sampling.stop.clone(),
        ansi: std::io::stdout().is_terminal(),
        generating,
        interrupt,
    };
    chat.note(&format!(
        "gptoss chat: {} on {} (reasoning {}). /help lists commands; Ctrl-C stops a reply; \
         Ctrl-D or /quit leaves.",
        dir.display(),
        chat.model.backend_name(),
        chat.conv.effort
    ));
    if chat.conv.awaits_reply() {
        chat.reply();
    }
    chat.repl()
}

impl Chat {
    fn repl(&mut self) -> Result<()> {
        let stdin = std::io::stdin();
        let mut line = String::new();
        loop {
            Target::Stdout.write("> ");
            line.clear();
            match stdin.lock().read_line(&mut line) {
                Ok(0) => {
                    Target::Stdout.write("\n");
                    return Ok(());
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    self.note("that line is not valid UTF-8; type it again");
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::Input(format!("reading the terminal: {e}"))),
            }
            let input = line.trim();
            if input.is_empty() {
                continue;
            }
            if let Some(cmd) = input.strip_prefix('/') {
                if !self.command(cmd) {
                    return Ok(());
                }
                continue;
            }
            self.conv.messages.push(ChatMessage::user(input));
            self.reply();
        }
    }

    /// Runs a /command; false means leave.
    fn command(&mut self, cmd: &str) -> bool {
        let (name, arg) = cmd.split_once(' ').unwrap_or((cmd, ""));
        let arg = arg.trim();
        match name {
            "quit" | "exit" | "q" => return false,
            "help" | "?" => self.note(HELP),
            "reset" => {
                self.conv.messages.clear();
                self.note("conversation cleared (system instructions kept)");
            }
            "reasoning" => match arg.parse::<ReasoningEffort>() {
                Ok(e) => {
                    self.conv.effort = e;
                    self.note(&format!("reasoning effort: {e}"));
                }
                Err(_) if arg.is_empty() => self.note(&format!(
                    "reasoning effort is {}; /reasoning low|medium|high changes it",
                    self.conv.effort
                )),
                Err(e) => self.note(&e.to_string()),
            },
            "think" => {
                self.think = match arg {
                    "on" => true,
                    "off" => false,
                    "" => !self.think,
                    _ => {
                        self.note("/think on or /think off");
                        return true;
                    }
                };
                self.note(if self.think {
                    "reasoning shown"
                } else {
                    "reasoning collapsed"
                });
            }
            "system" => {
                if arg.is_empty() {
                    self.conv.system = None;
                    self.note("system instructions cleared");
                } else {
                    self.conv.system = Some(arg.to_string());
                    self.note("system instructions set");
                }
            }
            "save" => {
                if arg.is_empty() {
                    self.note("/save FILE: give a file name");
                } else {
                    match self.conv.save(std::path::Path::new(arg)) {
                        Ok(()) => self.note(&format!(
                            "saved {} messages to {arg}",
                            self.conv.to_request().messages.len()
                        )),
                        Err(e) => self.note(&format!("error: {e}")),
                    }
                }
            }
            other => self.note(&format!("unknown command /{other}; /help lists them")),
        }
        true
    }

    /// Streams the model's reply to the conversation and adds it to the history. Errors are
    /// reported and the REPL goes on.
    fn reply(&mut self) {
        if let Err(e) = self.try_reply() {
            // The question stays unanswered: take it back so the history stays well-formed.
            if self.conv.awaits_reply() {
                self.conv.messages.pop();
            }
            self.note(&format!("error: {e}"));
        }
    }

    fn try_reply(&mut self) -> Result<()> {
        let prompt = self.conv.render(&self.tok, &self.opts)?;
        textgen::check_vocab(&prompt, &self.model.config, &self.tok)?;
        let view = View {
            answer: Target::Stdout,
            side: Target::Stdout,
            ansi: self.ansi,
            reasoning: if self.think {
                Reasoning::Shown
            } else {
                Reasoning::Collapsed
            },
        };
        let mut out = ReplyPrinter::new(&self.tok, &self.stop, view);
        let mut stop_ids = self.model.config.eos_token_ids();
        stop_ids.extend(
            STOP_TOKENS
                .iter()
                .filter(|t| !stop_ids.contains(t))
                .collect::<Vec<_>>(),
        );
        self.interrupt.store(false, Ordering::SeqCst);
        self.generating.store(true, Ordering::SeqCst);
        let gen = textgen::run(
            &mut self.model,
            &self.cfg,
            &prompt,
            &mut self.sampler,
            self.max_tokens,
            &stop_ids,
            Some(self.interrupt.as_ref()),
            &mut |id| out.push(id),
        );
        self.generating.store(false, Ordering::SeqCst);
        let turn = out.finish();
        let gen = gen?;
        match gen.end {
            End::Interrupted => self.note("[stopped]"),
            End::MaxTokens => self.note(&format!("[cut at --max-tokens {}]", self.max_tokens)),
            End::StopToken(_) | End::Caller => {}
        }
        if turn.content.is_empty() && turn.tool_calls.is_empty() {
            self.conv.messages.pop();
            self.note("(no answer; the question was taken back from the history)");
        } else {
            self.conv.messages.push(turn.to_chat_message());
        }
        Ok(())
    }

    /// A dimmed line from gptoss itself.
    fn note(&self, text: &str) {
        if self.ansi {
            Target::Stdout.write(&format!("\x1b[2m{text}\x1b[0m\n"));
        } else {
            Target::Stdout.write(&format!("{text}\n"));
        }
        let _ = std::io::stdout().flush();
    }
}
