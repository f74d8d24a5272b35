//! `lockstep verify`: the main job's table.

use super::args::print_json;
use super::env::backend_infos;
use lockstep::error::{Error, Result};
use lockstep::ident::BackendKind;
use lockstep::verify::case::{Filter, Key};
use lockstep::verify::summary::{self, Status};
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
    /// Write verify.md (the table, linking each row's report), verify.json
    /// and, per parity or envelope row, its report with plots, here.
    #[arg(long)]
    report: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    let filter = Filter::new(a.filter);
    let json = a.json;
    let (results, filtered, kept) = lockstep::jobs::verify::verify_keeping(
        &a.root,
        &filter,
        &mut |r| {
            if !json {
                eprintln!("{:<14} {:<60} {:?}", r.check.name(), r.case.id(), r.status);
            }
        },
        a.report.is_some(),
    )?;
    let ran_cuda = results
        .iter()
        .any(|r| r.case.backend == BackendKind::Cuda && !matches!(r.status, Status::Skipped(_)));
    let backends = backend_infos(ran_cuda).0;
    if json {
        // Each row carries the fingerprint of the backend (and numerics)
        // that produced it; a skipped row has none.
        let rows: Vec<serde_json::Value> = results
            .iter()
            .map(|r| {
                let mut v = serde_json::to_value(r).expect("a row serialises");
                let numerics = r.case.get(Key::Numerics);
                let fp = (!matches!(r.status, Status::Skipped(_)))
                    .then(|| {
                        backends.iter().find(|b| {
                            b.backend == r.case.backend
                                && numerics.is_none_or(|n| n == b.numerics.name())
                        })
                    })
                    .flatten();
                v["fingerprint"] = serde_json::to_value(fp).expect("a fingerprint serialises");
                v
            })
            .collect();
        print_json(&serde_json::json!({
            "lockstep_version": env!("CARGO_PKG_VERSION"),
            "backends": backends,
            "results": rows,
            "filtered_out": filtered,
            "tolerance_overrides": lockstep::verify::tolerances::overrides(),
        }));
    } else {
        println!("lockstep {} verify", env!("CARGO_PKG_VERSION"));
        for b in &backends {
            println!("  {}/{} on {}", b.backend, b.numerics, b.device);
        }
        for o in lockstep::verify::tolerances::overrides() {
            println!(
                "  TOLERANCE OVERRIDDEN ({}): {} = {:e} instead of {:e}: {}",
                o.file, o.name, o.value, o.committed, o.reason
            );
        }
        print!("{}", summary::to_text(&results));
        if filtered > 0 {
            println!("{filtered} row(s) left out by --filter");
        }
    }
    if let Some(p) = a.markdown {
        std::fs::write(&p, summary::to_markdown(&results)).map_err(|e| Error::io(&p, e))?;
    }
    if let Some(dir) = &a.report {
        write_report(dir, &results, &kept)?;
        eprintln!("report: {}", dir.join("verify.md").display());
    }
    if results.is_empty() {
        return Err(Error::invalid("--filter", "no row matches"));
    }
    match summary::failed(&results) {
        0 => Ok(()),
        n => Err(Error::invalid("verify", format!("{n} check(s) failed"))),
    }
}

/// verify.md (the table, then a link per row with a report), verify.json,
/// and each kept parity report or envelope with its plots, named by row.
fn write_report(
    dir: &std::path::Path,
    results: &[lockstep::verify::summary::CheckResult],
    kept: &[(usize, lockstep::jobs::verify::Artifact)],
) -> Result<()> {
    use lockstep::jobs::verify::Artifact;
    use lockstep::report::{write_envelope_report, write_parity_report};
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut md = format!(
        "# lockstep {} verify\n\n{}\n## Row reports\n\n",
        env!("CARGO_PKG_VERSION"),
        summary::to_markdown(results)
    );
    for (i, a) in kept {
        let stem = format!("row-{}", i + 1);
        match a {
            Artifact::Parity(p) => write_parity_report(dir, &stem, &[p.as_ref()])?,
            Artifact::Envelope(e) => write_envelope_report(dir, &stem, &[e.as_ref()], 0)?,
        };
        md += &format!("- [{}: {}]({stem}.md)\n", i + 1, results[*i].case.id());
    }
    lockstep::util::write_atomically(&dir.join("verify.md"), |w| {
        std::io::Write::write_all(w, md.as_bytes())
    })?;
    lockstep::util::write_json_atomically(&dir.join("verify.json"), &results)
}
