//! `lockstep batch`: one sequence decoded alone and in several batch
//! compositions on one backend and path, and the spread batching adds
//! (bitwise where the settings promise batch invariance, an envelope where
//! they do not, as CUDA's fast mode).

use super::args::{print_json, PathArg, TargetArgs};
use lockstep::backend::{AttnPath, Backend};
use lockstep::engine::Engine;
use lockstep::error::Result;
use lockstep::jobs::batch::{composition_envelope, compositions, CompositionEnvelope};
use lockstep::jobs::fixture::{run_on, EngineJob};
use lockstep::model::Model;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = "synth:tiny")]
    model: String,
    /// The path decoded (default graph).
    #[arg(long, value_enum)]
    path: Option<PathArg>,
    /// Batch compositions: sizes going round 2, 3, 5, 8, 9, 12, 16, 24
    /// and 32, the sequence at a moving slot, companions joining at the
    /// first or second step.
    #[arg(long, default_value_t = 9, value_parser = clap::value_parser!(u32).range(1..))]
    compositions: u32,
    /// Decode steps compared per composition.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..))]
    steps: u32,
    #[arg(long, value_delimiter = ',', default_value = "1,17,42,99,3,250,7,8")]
    prompt_ids: Vec<u32>,
    #[command(flatten)]
    target: TargetArgs,
    #[arg(long)]
    json: bool,
}

struct Job<'a> {
    prompt: &'a [u32],
    compositions: usize,
    steps: usize,
    path: AttnPath,
}

impl EngineJob for Job<'_> {
    type Output = CompositionEnvelope;
    fn run<B: Backend>(self, e: &Engine<B>) -> Result<CompositionEnvelope> {
        composition_envelope(
            e,
            self.prompt,
            &compositions(self.compositions),
            self.steps,
            self.path,
        )
    }
}

pub fn run(a: Args) -> Result<()> {
    let m = Model::open(&a.model)?;
    let job = Job {
        prompt: &a.prompt_ids,
        compositions: a.compositions as usize,
        steps: a.steps as usize,
        path: a.path.map_or(AttnPath::Graph, Into::into),
    };
    let env = run_on(&m, a.target.target()?, job)?;
    if a.json {
        print_json(&env);
    } else {
        print!("{}", env.to_text());
    }
    Ok(())
}
