//! `lockstep score`: a token sequence's teacher-forced logits, per step the
//! scored token's log-probability and rank, the row's top-k and margin, and
//! (with --json) the full rows at the run's own precision.

use super::args::{print_json, print_run_head, PathArg, TargetArgs};
use lockstep::backend::Backend;
use lockstep::engine::record::ScoredRun;
use lockstep::engine::Engine;
use lockstep::error::Result;
use lockstep::jobs::fixture::{run_on, EngineJob};
use lockstep::jobs::score::score;
use lockstep::model::Model;

#[derive(clap::Args)]
pub struct Args {
    /// A model folder or synth:PRESET[:SEED].
    #[arg(long, default_value = "synth:tiny")]
    model: String,
    #[arg(long, value_enum, default_value = "graph")]
    path: PathArg,
    /// The context, comma-separated token ids.
    #[arg(long, value_delimiter = ',', required = true)]
    prompt_ids: Vec<u32>,
    /// The tokens to score after it, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    tokens: Vec<u32>,
    /// Entries of each step's top list.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(2..=4096))]
    top_k: u32,
    /// Leave the full logit rows out of the JSON.
    #[arg(long)]
    no_logits: bool,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: TargetArgs,
}

struct Score<'a> {
    a: &'a Args,
}

impl EngineJob for Score<'_> {
    type Output = ScoredRun;
    fn run<B: Backend>(self, e: &Engine<B>) -> Result<ScoredRun> {
        score(
            e,
            &self.a.prompt_ids,
            &self.a.tokens,
            self.a.path.into(),
            self.a.top_k as usize,
            !self.a.no_logits && self.a.json,
        )
    }
}

pub fn run(a: Args) -> Result<()> {
    let m = Model::open(&a.model)?;
    let target = a.target.target()?;
    let run = run_on(&m, target, Score { a: &a })?;
    if a.json {
        print_json(&run);
        return Ok(());
    }
    print_run_head(&run.fingerprint, &run.prompt);
    println!("step  token  logprob      rank  greedy  margin");
    for (i, s) in run.steps.iter().enumerate() {
        println!(
            "{i:>4}  {:>5}  {:>11.6}  {:>4}  {:>6}  {:.5}",
            s.token, s.logprob, s.rank, s.greedy, s.margin
        );
    }
    let n = run.steps.len() as f64;
    println!(
        "total logprob {:.6}, perplexity {:.4}",
        run.total_logprob(),
        (-run.total_logprob() / n).exp()
    );
    Ok(())
}
