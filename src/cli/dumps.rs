//! `lockstep bisect` (two dumps op by op) and `lockstep compare --theirs`
//! (another engine's dump against lockstep's f64 truth and bf16-faithful
//! reference): markdown on stdout, JSON with --json, and with --report DIR
//! the markdown, JSON and an SVG depth plot written there.

use super::args::print_json;
use lockstep::engine::dump::Dump;
use lockstep::error::{Error, Result};
use lockstep::model::Model;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct BisectArgs {
    /// The first dump (A).
    a: PathBuf,
    /// The second dump (B, the reference side of the relative RMS).
    b: PathBuf,
    /// The model both dumps were made with (its hash must match theirs).
    #[arg(long)]
    model: String,
    /// An f64 dump of the same input: each op says which side is nearer it.
    #[arg(long)]
    truth: Option<PathBuf>,
    /// Write bisect.md, bisect.json and bisect.svg here.
    #[arg(long)]
    report: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct CompareArgs {
    /// Their dump (docs/dump-format.md).
    #[arg(long)]
    theirs: PathBuf,
    /// The model folder (or synth:PRESET[:SEED]) the dump was made with.
    #[arg(long)]
    model: String,
    /// Write compare.md, compare.json and compare.svg here.
    #[arg(long)]
    report: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

fn write_report(
    dir: &Path,
    stem: &str,
    md: &str,
    json: &impl serde::Serialize,
    svg: Option<String>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let write = |name: String, text: &str| {
        let p = dir.join(name);
        lockstep::util::write_atomically(&p, |w| w.write_all(text.as_bytes()))
    };
    write(format!("{stem}.md"), md)?;
    write(
        format!("{stem}.json"),
        &serde_json::to_string_pretty(json).expect("report serialises"),
    )?;
    if let Some(svg) = svg {
        write(format!("{stem}.svg"), &svg)?;
    }
    Ok(())
}

pub fn bisect(a: BisectArgs) -> Result<()> {
    let m = Model::open(&a.model)?;
    let hash = lockstep::jobs::load_cpu(&m, lockstep::ident::Numerics::Bf16)?.model_hash;
    let da = Dump::open(&a.a, &m.config, &hash)?;
    let db = Dump::open(&a.b, &m.config, &hash)?;
    let dt = a
        .truth
        .as_ref()
        .map(|t| Dump::open(t, &m.config, &hash))
        .transpose()?;
    let b = lockstep::verify::bisect::bisect(&da, &db, dt.as_ref())?;
    let md = b.to_markdown();
    if let Some(dir) = &a.report {
        write_report(dir, "bisect", &md, &b, lockstep::report::bisect_plot(&b))?;
    }
    if a.json {
        print_json(&b);
    } else {
        print!("{md}");
    }
    Ok(())
}

/// Exits non-zero (through the error) when their error is not ordinary.
pub fn compare(a: CompareArgs) -> Result<()> {
    let m = Model::open(&a.model)?;
    let r = lockstep::jobs::trace::compare_theirs(&m, &a.theirs)?;
    let md = r.to_markdown();
    if let Some(dir) = &a.report {
        write_report(dir, "compare", &md, &r, lockstep::report::theirs_plot(&r))?;
    }
    if a.json {
        print_json(&r);
    } else {
        print!("{md}");
    }
    match &r.first_failing {
        None => Ok(()),
        Some(f) => Err(Error::invalid(
            "compare",
            format!("{}: {f} is beyond ordinary bf16 error", a.theirs.display()),
        )),
    }
}
