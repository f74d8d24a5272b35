//! `lockstep bench`: CUDA decode speed per path x mode x graphs, batch 1.

use super::args::{print_json, BackendArg, GraphsArg, ModeArg, PathArg};
use lockstep::bench::{cuda_bench, Grid, Timing};
use lockstep::error::{Error, Result};
use lockstep::model::Model;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = "synth:qwen3-0.6b")]
    model: String,
    #[arg(long, value_enum, default_value = "cuda")]
    backend: BackendArg,
    #[arg(long, value_enum, value_delimiter = ',', default_value = "fused,graph")]
    paths: Vec<PathArg>,
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "deterministic,fast"
    )]
    modes: Vec<ModeArg>,
    /// CUDA graphs settings to time: on, off or both.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "on")]
    graphs: Vec<GraphsArg>,
    #[arg(long, default_value_t = 16)]
    prompt_tokens: usize,
    #[arg(long, default_value_t = 32)]
    warmup: usize,
    #[arg(long, default_value_t = 256)]
    tokens: usize,
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    #[arg(long)]
    json: bool,
    /// Also write the JSON report to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    if a.backend != BackendArg::Cuda {
        return Err(Error::invalid(
            "--backend",
            "bench measures the CUDA backend (the others are references)",
        ));
    }
    let grid = Grid {
        paths: a.paths.into_iter().map(Into::into).collect(),
        modes: a.modes.into_iter().map(Into::into).collect(),
        graphs: a.graphs.into_iter().map(Into::into).collect(),
    };
    let timing = Timing {
        prompt_tokens: a.prompt_tokens,
        warmup: a.warmup,
        tokens: a.tokens,
        repeats: a.repeats,
    };
    let rep = cuda_bench(&Model::open(&a.model)?, &grid, timing)?;
    if let Some(path) = a.out {
        lockstep::util::write_json_atomically(&path, &rep)?;
    }
    if a.json {
        print_json(&rep);
    } else {
        print!("{}", rep.to_text());
    }
    Ok(())
}
