//! `gptoss`: run OpenAI's gpt-oss models. See `gptoss --help`.

mod backend_select;
mod chat_state;
mod cmd_backends;
mod cmd_bench;
mod cmd_chat;
mod cmd_detokenize;
mod cmd_download;
mod cmd_generate;
mod cmd_logits;
mod cmd_serve;
mod cmd_synth;
mod cmd_tokenize;
mod common;
mod fit;
mod progress;
mod reply;
mod text_args;
mod textgen;

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
    /// Answer a prompt (harmony chat format, answer streamed to stdout), continue plain text
    /// (--raw), or continue token ids (--tokens, printed as ids).
    Generate(cmd_generate::Args),
    /// Chat interactively: streamed replies, reasoning dimmed and collapsible, history,
    /// /reset /reasoning /system /save /think /quit; Ctrl-C stops a reply.
    Chat(cmd_chat::Args),
    /// Print the token ids of text (--text) or of a chat's rendered prompt (--messages) as a
    /// JSON array.
    Tokenize(cmd_tokenize::Args),
    /// Print the text of token ids (special tokens as their names, e.g. <|start|>).
    Detokenize(cmd_detokenize::Args),
    /// Find a model in the local Hugging Face cache. gptoss never downloads (it is built
    /// without network access): when the model is not there, this says at once how to get it
    /// (`huggingface-cli download REPO` on a machine with a network, or a local folder).
    Download(cmd_download::Args),
    /// List the backends found (plugins and built-in), the devices each sees with its score
    /// and reason, which one auto-selection picks, and the GPUs detected.
    Backends(cmd_backends::Args),
    /// Measure prefill and decode speed and decode's fraction of the memory-bandwidth roofline,
    /// on a real model or a random one of the real shapes (--synthetic 20b).
    Bench(cmd_bench::Args),
    /// Write a random checkpoint of the real shapes (sharded safetensors + index, MXFP4
    /// experts), to time and test the real loading path without downloading a model.
    Synth(cmd_synth::Args),
    /// Serve the model over HTTP with OpenAI's APIs (chat completions, responses, models,
    /// tokenize), streaming, tool calls and reasoning; see the README.
    Serve(cmd_serve::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Diagnostics (e.g. why a backend was or was not chosen) go to stderr; RUST_LOG=debug shows them.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let result = match cli.command {
        Command::Logits(a) => cmd_logits::run(a),
        Command::Generate(a) => cmd_generate::run(a),
        Command::Chat(a) => cmd_chat::run(a),
        Command::Tokenize(a) => cmd_tokenize::run(a),
        Command::Detokenize(a) => cmd_detokenize::run(a),
        Command::Download(a) => cmd_download::run(a),
        Command::Backends(a) => cmd_backends::run(a),
        Command::Bench(a) => cmd_bench::run(a),
        Command::Synth(a) => cmd_synth::run(a),
        Command::Serve(a) => cmd_serve::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
