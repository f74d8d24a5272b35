//! `lockstep parity`: fused vs graph vs f64 truth at op, layer and logits
//! level, on any backend (truth: the CPU reference in f64).

use super::args::{print_json, TargetArgs};
use lockstep::error::{Error, Result};
use lockstep::jobs::parity::parity_of;
use lockstep::model::Model;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = "synth:tiny")]
    model: String,
    #[command(flatten)]
    target: TargetArgs,
    /// Comma-separated prompt ids; greedy tokens are appended up to --tokens.
    #[arg(long, value_delimiter = ',', default_value = "1,17,42,99,3,250,7,8")]
    prompt_ids: Vec<u32>,
    #[arg(long, default_value_t = 32)]
    tokens: usize,
    #[arg(long)]
    json: bool,
    /// Write markdown, JSON and SVG plots into this folder.
    #[arg(long)]
    report: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    let m = Model::open(&a.model)?;
    let (op, run) = parity_of(&m, a.target.target()?, &a.prompt_ids, a.tokens)?;
    if a.json {
        print_json(&[&op, &run]);
    } else {
        print!("{}\n{}", op.to_text(), run.to_text());
    }
    if let Some(dir) = a.report {
        for p in lockstep::report::write_parity_report(&dir, "parity", &[&op, &run])? {
            eprintln!("wrote {}", p.display());
        }
    }
    if op.pass && run.pass {
        Ok(())
    } else {
        Err(Error::invalid("parity", "outside tolerance"))
    }
}
