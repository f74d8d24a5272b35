//! `lockstep trace`: every layer's intermediate tensors of one
//! teacher-forced pass, on any backend, path and numerics, as a dump
//! (docs/dump-format.md) that `bisect` and `compare --theirs` read.

use super::args::{print_json, PathArg, TargetArgs};
use lockstep::backend::Backend;
use lockstep::engine::dump::Selection;
use lockstep::engine::trace::TraceOp;
use lockstep::engine::Engine;
use lockstep::error::{Error, Result};
use lockstep::jobs::fixture::{run_on, EngineJob};
use lockstep::jobs::trace::{trace_to_dir, TraceSummary};
use lockstep::model::Model;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A model folder or synth:PRESET[:SEED].
    #[arg(long, default_value = "synth:tiny")]
    model: String,
    #[arg(long, value_enum, default_value = "graph")]
    path: PathArg,
    /// The prompt, comma-separated token ids.
    #[arg(long, value_delimiter = ',', required = true)]
    prompt_ids: Vec<u32>,
    /// Tokens forced after the prompt (teacher-forced), comma-separated.
    #[arg(long, value_delimiter = ',')]
    tokens: Vec<u32>,
    /// Layers to keep (comma-separated; default every layer).
    #[arg(long, value_delimiter = ',')]
    layers: Vec<usize>,
    /// Ops to keep, by dump name (comma-separated; default every op):
    /// embed, input_norm, q_proj, k_proj, q_norm, k_norm, q, k, v,
    /// attention, o_proj, attn_residual, post_norm, router_logits, experts,
    /// expert_weights, mlp, output, final_norm, logits.
    #[arg(long, value_delimiter = ',')]
    ops: Vec<String>,
    /// Positions (rows) to keep, ascending (default every position).
    #[arg(long, value_delimiter = ',')]
    positions: Vec<usize>,
    /// The dump folder to write (manifest.json, tensors.safetensors).
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: TargetArgs,
}

struct Trace<'a> {
    a: &'a Args,
    select: Selection,
}

impl EngineJob for Trace<'_> {
    type Output = TraceSummary;
    fn run<B: Backend>(self, e: &Engine<B>) -> Result<TraceSummary> {
        let tokens: Vec<u32> = self
            .a
            .prompt_ids
            .iter()
            .chain(&self.a.tokens)
            .copied()
            .collect();
        if let Some(&l) = self
            .a
            .layers
            .iter()
            .find(|&&l| l >= e.config.num_hidden_layers)
        {
            return Err(Error::invalid(
                "--layers",
                format!("layer {l}: the model has {}", e.config.num_hidden_layers),
            ));
        }
        trace_to_dir(e, &tokens, self.a.path.into(), self.select, &self.a.out)
    }
}

pub fn run(a: Args) -> Result<()> {
    let ops = a
        .ops
        .iter()
        .map(|s| {
            TraceOp::parse(s).ok_or_else(|| {
                let names: Vec<_> = TraceOp::ALL.iter().map(|o| o.name()).collect();
                Error::invalid(
                    "--ops",
                    format!("unknown op `{s}`; ops: {}", names.join(", ")),
                )
            })
        })
        .collect::<Result<_>>()?;
    let select = Selection {
        layers: (!a.layers.is_empty()).then(|| a.layers.iter().copied().collect()),
        ops: (!a.ops.is_empty()).then_some(ops),
        positions: (!a.positions.is_empty()).then(|| a.positions.clone()),
    };
    let m = Model::open(&a.model)?;
    let target = a.target.target()?;
    let s = run_on(&m, target, Trace { a: &a, select })?;
    if a.json {
        print_json(&s);
        return Ok(());
    }
    println!("engine     {}", s.manifest.engine);
    println!("model      {} ({})", m.origin, s.manifest.model_hash);
    println!("tokens     {:?}", s.manifest.tokens);
    println!("positions  {:?}", s.manifest.positions);
    println!(
        "wrote      {} tensors, {} bytes, to {}",
        s.tensors,
        s.bytes,
        s.dir.display()
    );
    Ok(())
}
