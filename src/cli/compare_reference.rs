//! `lockstep compare-reference`: the CPU reference against a transformers
//! reference file.

use super::args::print_json;
use lockstep::error::{Error, Result};
use lockstep::model::Model;
use lockstep::verify::reference::Reference;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    reference: PathBuf,
    /// Model folder or synth spec; defaults to synth:PRESET:SEED from the file.
    #[arg(long)]
    model: Option<String>,
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let r = Reference::load(&a.reference)?;
    let spec = a
        .model
        .unwrap_or_else(|| format!("synth:{}:{}", r.preset, r.seed));
    let report = lockstep::jobs::oracle::compare_with_reference(&r, &Model::open(&spec)?)?;
    if a.json {
        print_json(&report);
    } else {
        print!("{}", report.to_text());
    }
    if report.pass {
        Ok(())
    } else {
        Err(Error::invalid(
            a.reference.display().to_string(),
            "outside tolerance",
        ))
    }
}
