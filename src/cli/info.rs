//! `lockstep info`: config summary and the model hash.

use super::args::print_json;
use lockstep::error::Result;
use lockstep::ident::Numerics;
use lockstep::model::Model;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = "synth:tiny")]
    model: String,
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let m = Model::open(&a.model)?;
    let engine = lockstep::jobs::load_cpu(&m, Numerics::Bf16)?;
    let params = lockstep::model::layout::parameter_count(&m.config);
    if a.json {
        print_json(&serde_json::json!({
            "origin": m.origin, "model_hash": engine.model_hash, "parameters": params,
            "config": m.config, "unexpected_tensors": m.unexpected_tensors,
        }));
        return Ok(());
    }
    println!("origin      {}", m.origin);
    println!("model hash  {}", engine.model_hash);
    println!("parameters  {params}");
    println!("config      {}", m.config.canonical_json());
    for t in &m.unexpected_tensors {
        println!("warning: unexpected tensor `{t}` (ignored)");
    }
    Ok(())
}
