//! `lockstep envelope`: one input run N times, and the spread; with
//! `--containment`, both paths so, and whether fused lies inside graph's.

use super::args::{print_json, LevelArg, PathArg, TargetArgs};
use lockstep::backend::{AttnPath, Backend};
use lockstep::engine::Engine;
use lockstep::error::{Error, Result};
use lockstep::ident::Numerics;
use lockstep::jobs::envelope::containment_of;
use lockstep::jobs::fixture::{run_on, EngineJob};
use lockstep::jobs::{envelope_of, EnvelopeLevel};
use lockstep::model::Model;
use lockstep::verify::containment::PathContainment;
use lockstep::verify::envelope::Envelope;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = "synth:tiny")]
    model: String,
    /// The path whose runs are measured (default graph).
    #[arg(long, value_enum)]
    path: Option<PathArg>,
    /// Run both paths N times each (interleaved) and judge whether the
    /// fused path lies inside the graph path's envelope
    /// (docs/tolerances.md, containment_quantile); exits non-zero when it
    /// does not. At op and logits level a CPU f64 engine of the model gives
    /// the truth that decides where the graph path is deterministic.
    #[arg(long, conflicts_with = "path")]
    containment: bool,
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    #[arg(long, value_delimiter = ',', default_value = "1,17,42,99,3,250,7,8")]
    prompt_ids: Vec<u32>,
    /// Greedy steps per run (0: one teacher-forced pass over the prompt).
    #[arg(long, default_value_t = 32)]
    steps: usize,
    /// With --steps 0: every row's logits (default) or q, k, v of every
    /// layer (op).
    #[arg(long, value_enum)]
    level: Option<LevelArg>,
    #[command(flatten)]
    target: TargetArgs,
    #[arg(long)]
    json: bool,
    #[arg(long)]
    report: Option<PathBuf>,
}

struct Runs<'a> {
    level: EnvelopeLevel,
    path: AttnPath,
    tokens: &'a [u32],
    runs: usize,
}

impl EngineJob for Runs<'_> {
    type Output = Envelope;
    fn run<B: Backend>(self, e: &Engine<B>) -> Result<Envelope> {
        envelope_of(e, self.level, self.path, self.tokens, self.runs)
    }
}

struct BothPaths<'a> {
    level: EnvelopeLevel,
    tokens: &'a [u32],
    runs: usize,
    truth: Option<Engine<lockstep::backend::cpu::CpuBackend>>,
}

impl EngineJob for BothPaths<'_> {
    type Output = PathContainment;
    fn run<B: Backend>(self, e: &Engine<B>) -> Result<PathContainment> {
        containment_of(e, self.truth.as_ref(), self.level, self.tokens, self.runs)
    }
}

pub fn run(a: Args) -> Result<()> {
    let level = match (a.steps, a.level) {
        (0, None | Some(LevelArg::Logits)) => EnvelopeLevel::Logits,
        (0, Some(LevelArg::Op)) => EnvelopeLevel::Op,
        (steps, None) => EnvelopeLevel::Greedy { steps },
        (_, Some(_)) => {
            return Err(Error::invalid(
                "--level",
                "applies to teacher-forced envelopes (--steps 0); greedy runs record logits",
            ))
        }
    };
    let m = Model::open(&a.model)?;
    let target = a.target.target()?;
    if a.containment {
        let truth = match level {
            EnvelopeLevel::Greedy { .. } => None,
            _ => Some(lockstep::jobs::fixture::load_cpu(&m, Numerics::F64)?),
        };
        let job = BothPaths {
            level,
            tokens: &a.prompt_ids,
            runs: a.runs as usize,
            truth,
        };
        let c = run_on(&m, target, job)?;
        if a.json {
            print_json(&c);
        } else {
            print!("{}", c.to_text());
        }
        if let Some(dir) = a.report {
            let envs = [&c.graph, &c.fused];
            for p in lockstep::report::write_envelope_report(&dir, "envelope", &envs, a.steps)? {
                eprintln!("wrote {}", p.display());
            }
            let p = dir.join("containment.json");
            let v = serde_json::to_value(&c)
                .map_err(|e| Error::invalid("containment.json", e.to_string()))?;
            lockstep::util::write_json_atomically(&p, &v)?;
            eprintln!("wrote {}", p.display());
        }
        return match c.contained {
            Some(false) => Err(Error::invalid(
                "envelope --containment",
                "the fused path is not inside the graph path's envelope",
            )),
            _ => Ok(()),
        };
    }
    let job = Runs {
        level,
        path: a.path.map_or(AttnPath::Graph, Into::into),
        tokens: &a.prompt_ids,
        runs: a.runs as usize,
    };
    let env = run_on(&m, target, job)?;
    if a.json {
        print_json(&env);
    } else {
        print!("{}", env.to_text());
    }
    if let Some(dir) = a.report {
        for p in lockstep::report::write_envelope_report(&dir, "envelope", &[&env], a.steps)? {
            eprintln!("wrote {}", p.display());
        }
    }
    Ok(())
}
