//! `gptoss`: run OpenAI's gpt-oss models. See `gptoss --help`.

mod backend_select;
mod cmd_generate;
mod cmd_logits;
mod common;
mod progress;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "gptoss",
    version,
    about = "Run OpenAI's gpt-oss-20b / gpt-oss-120b from their published checkpoints, offline."
)]
#[command(
    long_about = "Run OpenAI's gpt-oss-20b / gpt-oss-120b from their published checkpoints, offline.\n\n\
A model is a local folder (config.json + model*.safetensors) or a Hugging Face id such as\n\
openai/gpt-oss-20b that is already in the local HF cache. The repo ships tiny test models in\n\
tests/fixtures/ (e.g. tests/fixtures/tiny-b)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write the logits after every prompt position to a safetensors file (for checking a backend).
    Logits(cmd_logits::Args),
    /// Continue a prompt of token ids greedily and print the new ids.
    Generate(cmd_generate::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Logits(a) => cmd_logits::run(a),
        Command::Generate(a) => cmd_generate::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
