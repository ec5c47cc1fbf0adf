//! `gptoss generate`: answer a prompt in the harmony chat format (streamed), continue plain
//! text (`--raw`), or continue token ids (`--tokens`, printed as ids).

use std::io::{IsTerminal, Write};

use clap::Args as ClapArgs;
use gptoss_core::{Error, Result};
use gptoss_models::harmony::{render_prompt, ChatMessage};
use gptoss_models::sampler::Sampler;
use gptoss_models::tokenizer::{ENDOFTEXT, STOP_TOKENS};

use crate::common::{parse_tokens, ModelArgs};
use crate::reply::{RawPrinter, Reasoning, ReplyPrinter, Target, View};
use crate::text_args::{PromptArgs, SamplingArgs};
use crate::textgen::{self, End, Flow};

/// Most new tokens for text prompts when --max-tokens is not given.
const DEFAULT_TEXT_MAX_TOKENS: usize = 4096;
/// Most new tokens for --tokens when --max-tokens is not given.
const DEFAULT_IDS_MAX_TOKENS: usize = 32;

#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt. By default it is sent as the user's message of a harmony chat (system
    /// message with reasoning effort and date, then the user) and the final answer is
    /// streamed to stdout.
    #[arg(required_unless_present = "tokens", conflicts_with = "tokens")]
    pub prompt: Option<String>,
    /// Prompt token ids, comma-separated, instead of text: continued greedily (unless
    /// --temperature says otherwise) and printed as ids.
    #[arg(long)]
    pub tokens: Option<String>,
    /// Plain completion: continue the prompt text as is, without the chat format.
    #[arg(long, conflicts_with = "tokens")]
    pub raw: bool,
    /// Also print the model's reasoning (analysis channel), dimmed, to stderr.
    #[arg(long, conflicts_with_all = ["tokens", "raw"])]
    pub show_reasoning: bool,
    /// Most new tokens [default: 4096 for text, 32 for --tokens].
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Keep generating past the end-of-turn / end-of-sequence tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    #[command(flatten)]
    pub prompt_args: PromptArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

pub fn run(a: Args) -> Result<()> {
    let max_tokens = a.max_tokens.unwrap_or(if a.tokens.is_some() {
        DEFAULT_IDS_MAX_TOKENS
    } else {
        DEFAULT_TEXT_MAX_TOKENS
    });
    if max_tokens == 0 {
        return Err(Error::Input("--max-tokens must be at least 1".into()));
    }
    if let Some(tokens) = &a.tokens {
        return run_ids(&a, tokens, max_tokens);
    }
    let text = a.prompt.as_deref().unwrap_or_default();
    let dir = gptoss_models::hub::resolve_model_dir(&a.model.model)?;
    let tok = textgen::load_tokenizer(&dir)?;
    let prompt = if a.raw {
        tok.encode(text)?
    } else {
        render_prompt(
            &tok,
            &[ChatMessage::user(text)],
            &[],
            &a.prompt_args.render_options(),
        )?
    };
    if prompt.is_empty() {
        return Err(Error::Input(
            "the prompt is empty: give some text to continue".into(),
        ));
    }
    // Check the ids against the model's vocabulary before loading its weights.
    let config = gptoss_models::GptOssConfig::load(&dir)?;
    textgen::check_vocab(&prompt, &config, &tok)?;
    let mut sampler = Sampler::new(a.sampling.params(1.0)?)?;
    let (mut model, cfg) = a.model.load()?;
    let mut stop_ids: Vec<u32> = Vec::new();
    if !a.ignore_eos {
        stop_ids = model.config.eos_token_ids();
        let extra: &[u32] = if a.raw { &[ENDOFTEXT] } else { &STOP_TOKENS };
        stop_ids.extend(
            extra
                .iter()
                .filter(|t| !stop_ids.contains(t))
                .collect::<Vec<_>>(),
        );
    }
    let stop = &a.sampling.stop;
    let gen = if a.raw {
        let mut out = RawPrinter::new(&tok, stop);
        let gen = textgen::run(
            &mut model,
            &cfg,
            &prompt,
            &mut sampler,
            max_tokens,
            &stop_ids,
            None,
            &mut |id| {
                if stop_ids.contains(&id) {
                    Flow::Stop
                } else {
                    out.push(id)
                }
            },
        )?;
        out.finish();
        gen
    } else {
        let view = View {
            answer: Target::Stdout,
            side: Target::Stderr,
            ansi: std::io::stderr().is_terminal(),
            reasoning: if a.show_reasoning {
                Reasoning::Shown
            } else {
                Reasoning::Hidden
            },
        };
        let mut out = ReplyPrinter::new(&tok, stop, view);
        let gen = textgen::run(
            &mut model,
            &cfg,
            &prompt,
            &mut sampler,
            max_tokens,
            &stop_ids,
            None,
            &mut |id| out.push(id),
        )?;
        out.finish();
        gen
    };
    eprintln!(
        "generated {} tokens ({}; prompt {} tokens, seed {})",
        gen.tokens.len(),
        describe(gen.end),
        prompt.len(),
        sampler.seed()
    );
    Ok(())
}

fn describe(end: End) -> String {
    match end {
        End::StopToken(id) => format!("stop token {id}"),
        End::MaxTokens => "max tokens reached".into(),
        End::Caller => "stop string".into(),
        End::Interrupted => "interrupted".into(),
    }
}

/// `--tokens`: ids in, ids out (greedy unless --temperature is given).
fn run_ids(a: &Args, tokens: &str, max_tokens: usize) -> Result<()> {
    if !a.sampling.stop.is_empty() {
        return Err(Error::Input(
            "--stop works on text; with --tokens the output is ids (drop --stop)".into(),
        ));
    }
    let prompt = parse_tokens(tokens)?;
    let mut sampler = Sampler::new(a.sampling.params(0.0)?)?;
    let (mut model, cfg) = a.model.load()?;
    let stop = if a.ignore_eos {
        Vec::new()
    } else {
        model.config.eos_token_ids()
    };
    let mut stdout = std::io::stdout().lock();
    let mut first = true;
    let gen = textgen::run(
        &mut model,
        &cfg,
        &prompt,
        &mut sampler,
        max_tokens,
        &stop,
        None,
        &mut |t| {
            let _ = write!(stdout, "{}{t}", if first { "" } else { "," });
            let _ = stdout.flush();
            first = false;
            Flow::Continue
        },
    )?;
    let _ = writeln!(stdout);
    eprintln!("generated {} tokens", gen.tokens.len());
    Ok(())
}
