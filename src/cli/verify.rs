//! `lockstep verify`: the main job's table.

use super::args::print_json;
use super::env::backend_infos;
use lockstep::error::{Error, Result};
use lockstep::verify::case::Filter;
use lockstep::verify::summary;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Repository root holding golden/.
    #[arg(long, default_value = ".")]
    root: PathBuf,
    /// Run only the rows this matches (repeatable: any of them): `TEXT`
    /// found in the id's `op(k=v,...)` part, `@BACKEND` exactly, or both,
    /// e.g. `--filter @mlx`, `--filter 'qkv(preset=tiny,'`,
    /// `--filter golden@cuda`.
    #[arg(long)]
    filter: Vec<String>,
    #[arg(long)]
    json: bool,
    /// Also write the table as markdown to this file.
    #[arg(long)]
    markdown: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    let filter = Filter::new(a.filter);
    let json = a.json;
    let (results, filtered) = lockstep::jobs::verify::verify(&a.root, &filter, &mut |r| {
        if !json {
            eprintln!("{:<14} {:<60} {:?}", r.check.name(), r.case.id(), r.status);
        }
    })?;
    let backends = backend_infos(false).0;
    if json {
        print_json(&serde_json::json!({
            "lockstep_version": env!("CARGO_PKG_VERSION"),
            "backends": backends,
            "results": results,
            "filtered_out": filtered,
        }));
    } else {
        println!("lockstep {} verify", env!("CARGO_PKG_VERSION"));
        for b in &backends {
            println!("  {}/{} on {}", b.backend, b.numerics, b.device);
        }
        print!("{}", summary::to_text(&results));
        if filtered > 0 {
            println!("{filtered} row(s) left out by --filter");
        }
    }
    if let Some(p) = a.markdown {
        std::fs::write(&p, summary::to_markdown(&results)).map_err(|e| Error::io(&p, e))?;
    }
    if results.is_empty() {
        return Err(Error::invalid("--filter", "no row matches"));
    }
    match summary::failed(&results) {
        0 => Ok(()),
        n => Err(Error::invalid("verify", format!("{n} check(s) failed"))),
    }
}
