//! `gptoss logits`: logits after every prompt position, written as safetensors.

use std::path::{Path, PathBuf};

use clap::Args as ClapArgs;
use gptoss_core::{Error, Result};
use gptoss_models::LogitsWanted;

use crate::common::{parse_tokens, ModelArgs};

#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt token ids, comma-separated (e.g. 1,2,3).
    #[arg(long)]
    pub tokens: String,
    /// Output file: one f32 tensor named `logits`, shape [number of tokens, vocab_size].
    #[arg(long)]
    pub out: PathBuf,
    /// Feed the tokens one at a time through the KV cache instead of one prefill step.
    #[arg(long)]
    pub incremental: bool,
}

pub fn run(a: Args) -> Result<()> {
    let tokens = parse_tokens(&a.tokens)?;
    let (mut model, cfg) = a.model.load()?;
    let v = model.config.vocab_size;
    let capacity = crate::common::context_for(&cfg, &model.config, tokens.len())?;
    let mut session = model.new_session(capacity)?;
    let logits = if a.incremental {
        let mut all = Vec::with_capacity(tokens.len() * v);
        for t in &tokens {
            all.extend(model.forward(&mut session, &[*t], LogitsWanted::All)?);
        }
        all
    } else {
        model.forward(&mut session, &tokens, LogitsWanted::All)?
    };
    model.free_session(session)?;
    write_logits(&a.out, &logits, tokens.len(), v)?;
    eprintln!(
        "wrote logits [{}, {v}] to {}",
        tokens.len(),
        a.out.display()
    );
    Ok(())
}

/// Write atomically: a temporary file beside the target, renamed into place when complete.
fn write_logits(out: &Path, logits: &[f32], rows: usize, cols: usize) -> Result<()> {
    let bytes: Vec<u8> = logits.iter().flat_map(|x| x.to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![rows, cols], &bytes)
            .map_err(|e| Error::Input(format!("cannot build the logits tensor: {e}")))?;
    let data = safetensors::serialize([("logits", view)], None)
        .map_err(|e| Error::Input(format!("cannot serialise logits: {e}")))?;
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(Error::file(dir, "output folder does not exist"));
    }
    let tmp = dir.join(format!(
        ".{}.partial",
        out.file_name().and_then(|n| n.to_str()).unwrap_or("logits")
    ));
    std::fs::write(&tmp, &data).map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
    std::fs::rename(&tmp, out)
        .map_err(|e| Error::io(format!("moving {} to {}", tmp.display(), out.display()), e))
}
