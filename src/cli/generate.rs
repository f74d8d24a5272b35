//! `lockstep generate`: greedy generation on one backend and path.

use super::args::{print_json, print_run_head, PathArg, TargetArgs};
use lockstep::backend::Backend;
use lockstep::engine::generate::GenerateOptions;
use lockstep::engine::record::RecordedRun;
use lockstep::engine::Engine;
use lockstep::error::{Error, Result};
use lockstep::jobs::fixture::{run_on, EngineJob};
use lockstep::model::{tokenizer, Model};
use lockstep::progress::Progress;

#[derive(clap::Args)]
pub struct Args {
    /// A model folder or synth:PRESET[:SEED].
    #[arg(long, default_value = "synth:tiny")]
    model: String,
    #[arg(long, value_enum, default_value = "graph")]
    path: PathArg,
    /// Comma-separated token ids.
    #[arg(long, value_delimiter = ',', conflicts_with = "prompt")]
    prompt_ids: Option<Vec<u32>>,
    /// Text, encoded with the folder's tokenizer.json.
    #[arg(long)]
    prompt: Option<String>,
    #[arg(long, default_value_t = 16)]
    max_tokens: usize,
    /// Print the recorded run as JSON.
    #[arg(long)]
    json: bool,
    /// Keep full logit vectors in the JSON.
    #[arg(long)]
    keep_logits: bool,
    #[command(flatten)]
    target: TargetArgs,
}

struct Generate<'a> {
    ids: &'a [u32],
    opts: GenerateOptions,
}

impl EngineJob for Generate<'_> {
    type Output = RecordedRun;
    fn run<B: Backend>(self, e: &Engine<B>) -> Result<RecordedRun> {
        let mut p = Progress::new("generating", self.opts.max_tokens);
        e.generate(self.ids, &self.opts, &mut |i| p.set(i))
    }
}

pub fn run(a: Args) -> Result<()> {
    let m = Model::open(&a.model)?;
    for t in &m.unexpected_tensors {
        eprintln!(
            "warning: {}: unexpected tensor `{t}` is not used by {}",
            m.origin,
            m.config.architecture_name()
        );
    }
    let ids = match (a.prompt_ids, a.prompt) {
        (Some(ids), _) => ids,
        (None, Some(text)) => {
            let tp = m.tokenizer_path().ok_or_else(|| {
                Error::Prompt(format!(
                    "{} has no tokenizer.json; pass --prompt-ids",
                    a.model
                ))
            })?;
            tokenizer::encode(&tp, &text)?
        }
        (None, None) => return Err(Error::Prompt("give --prompt-ids or --prompt".into())),
    };
    let target = a.target.target()?;
    let opts = GenerateOptions {
        max_tokens: a.max_tokens,
        path: a.path.into(),
        keep_logits: a.keep_logits,
        ..Default::default()
    };
    let run = run_on(&m, target, Generate { ids: &ids, opts })?;
    if a.json {
        print_json(&run);
        return Ok(());
    }
    print_run_head(&run.fingerprint, &run.prompt);
    println!("tokens   {:?}", run.tokens);
    if let Some(d) = m
        .tokenizer_path()
        .and_then(|p| tokenizer::decode(&p, &run.tokens))
    {
        println!("text     {:?}", d.text);
        if !d.unknown.is_empty() {
            println!(
                "         (left out of the text: {} of the ids, {:?}, have no token in the tokenizer's vocabulary of {})",
                d.unknown.len(),
                d.unknown,
                d.vocabulary
            );
        }
    }
    let (i, min) = run
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| (i, s.margin))
        .fold((0, f32::INFINITY), |a, b| if b.1 < a.1 { b } else { a });
    println!("smallest top-1/top-2 margin: {min:.5} at step {i}");
    Ok(())
}
