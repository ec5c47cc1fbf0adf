//! `gptoss generate`: greedy continuation of a prompt given as token ids.

use std::io::Write;

use clap::Args as ClapArgs;
use gptoss_core::Result;

use crate::common::{parse_tokens, ModelArgs};

#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt token ids, comma-separated (text prompts come with the tokenizer).
    #[arg(long)]
    pub tokens: String,
    /// Most new tokens to generate.
    #[arg(long, default_value_t = 32)]
    pub max_tokens: usize,
    /// Keep generating past the model's end-of-sequence token(s).
    #[arg(long)]
    pub ignore_eos: bool,
}

pub fn run(a: Args) -> Result<()> {
    let prompt = parse_tokens(&a.tokens)?;
    let (mut model, cfg) = a.model.load()?;
    let stop = if a.ignore_eos {
        Vec::new()
    } else {
        model.config.eos_token_ids()
    };
    let capacity = crate::common::context_for(&cfg, &model.config, prompt.len() + a.max_tokens)?;
    let mut stdout = std::io::stdout().lock();
    let mut first = true;
    let out = model.generate_greedy(&prompt, a.max_tokens, &stop, capacity, &mut |t| {
        let _ = write!(stdout, "{}{t}", if first { "" } else { "," });
        let _ = stdout.flush();
        first = false;
    })?;
    let _ = writeln!(stdout);
    eprintln!("generated {} tokens", out.len());
    Ok(())
}
