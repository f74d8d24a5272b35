//! `lockstep synth`: write a synthetic Hugging Face folder.

use lockstep::error::Result;
use lockstep::model::synth::{Synth, PRESETS};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(PRESETS))]
    preset: String,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    out: PathBuf,
    /// Split weights into shards of at most this many bytes, with an index.
    #[arg(long)]
    shard_bytes: Option<usize>,
}

pub fn run(a: Args) -> Result<()> {
    let s = Synth::new(&a.preset, a.seed)?;
    lockstep::model::write_synth_folder(&s, &a.out, a.shard_bytes)?;
    println!(
        "wrote {} ({}) to {}",
        s.spec(),
        s.config.architecture_name(),
        a.out.display()
    );
    Ok(())
}
