//! `gptoss synth`: write a random checkpoint of the real shapes, in the published layout.

use std::path::PathBuf;

use clap::Args as ClapArgs;
use gptoss_core::Result;
use gptoss_models::synthetic::{write_checkpoint, Preset};

use crate::progress;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Shapes to use: 20b, 120b or tiny.
    #[arg(long)]
    pub preset: String,
    /// Keep only the first N layers (smaller files, same per-layer shapes).
    #[arg(long)]
    pub layers: Option<usize>,
    /// Folder to write config.json, model-*.safetensors and model.safetensors.index.json into.
    #[arg(long)]
    pub out: PathBuf,
    /// Approximate size of each shard in GiB.
    #[arg(long, default_value_t = 5.0)]
    pub shard_gib: f64,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

pub fn run(a: Args) -> Result<()> {
    let preset = Preset::parse(&a.preset)?;
    let shard = (a.shard_gib * (1u64 << 30) as f64).max(1.0) as u64;
    let mut bar = progress::Progress::new(format!(
        "writing synthetic {} to {}",
        a.preset,
        a.out.display()
    ));
    write_checkpoint(preset, a.layers, &a.out, shard, a.seed, &mut |d, t| {
        bar.update(d, t)
    })?;
    bar.finish();
    eprintln!(
        "wrote a random {} checkpoint to {}",
        a.preset,
        a.out.display()
    );
    Ok(())
}
