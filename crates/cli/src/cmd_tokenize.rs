//! `gptoss tokenize`: text, or a rendered chat, to token ids (a JSON array).

use std::path::PathBuf;

use clap::Args as ClapArgs;
use gptoss_core::{Error, Result};
use gptoss_models::harmony::ChatRequest;
use gptoss_models::tokenizer::Tokenizer;

use crate::text_args::PromptArgs;
use crate::textgen::load_tokenizer;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Model folder or cached Hugging Face id whose tokenizer.json to use; without it (or
    /// when the folder has none) the built-in o200k_harmony encoding. No weights are read.
    #[arg(long, short = 'm')]
    pub model: Option<String>,
    /// Text to encode as is (special-token text such as <|start|> stays plain text).
    #[arg(
        long,
        required_unless_present = "messages",
        conflicts_with = "messages"
    )]
    pub text: Option<String>,
    /// A JSON file of OpenAI chat messages (an array, or an object with "messages" and
    /// optional "tools" and "reasoning_effort"): prints the harmony prompt's ids, ending
    /// with <|start|>assistant, where the model continues.
    #[arg(long, value_name = "FILE.json")]
    pub messages: Option<PathBuf>,
    #[command(flatten)]
    pub prompt: PromptArgs,
}

pub fn run(a: Args) -> Result<()> {
    let tok = match &a.model {
        Some(m) => load_tokenizer(&gptoss_models::hub::resolve_model_dir(m)?)?,
        None => Tokenizer::o200k_harmony()?,
    };
    let ids = match (&a.text, &a.messages) {
        (Some(text), _) => tok.encode(text)?,
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::file(path, format!("cannot read the messages file: {e}")))?;
            let req =
                ChatRequest::from_json(&text).map_err(|e| Error::file(path, e.to_string()))?;
            req.render(&tok, &a.prompt.render_options())?
        }
        (None, None) => {
            return Err(Error::Input(
                "give --text TEXT or --messages FILE.json".into(),
            ))
        }
    };
    let list: Vec<String> = ids.iter().map(u32::to_string).collect();
    println!("[{}]", list.join(", "));
    Ok(())
}
