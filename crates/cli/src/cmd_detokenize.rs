//! `gptoss detokenize`: token ids back to text (special tokens as their names).

use clap::Args as ClapArgs;
use gptoss_core::Result;
use gptoss_models::tokenizer::Tokenizer;

use crate::common::parse_ids;
use crate::textgen::load_tokenizer;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Model folder or cached Hugging Face id whose tokenizer.json to use; without it (or
    /// when the folder has none) the built-in o200k_harmony encoding.
    #[arg(long, short = 'm')]
    pub model: Option<String>,
    /// Token ids: "1,2,3", or a JSON array as `gptoss tokenize` prints it.
    pub ids: String,
}

pub fn run(a: Args) -> Result<()> {
    let s = a.ids.trim();
    let s = s
        .strip_prefix('[')
        .map_or(s, |r| r.strip_suffix(']').unwrap_or(r));
    let ids = parse_ids(s, "token ids")?;
    let tok = match &a.model {
        Some(m) => load_tokenizer(&gptoss_models::hub::resolve_model_dir(m)?)?,
        None => Tokenizer::o200k_harmony()?,
    };
    let text = tok.decode(&ids)?;
    println!("{text}");
    Ok(())
}
