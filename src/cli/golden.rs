//! `lockstep golden check|regen`.

use super::args::{print_json, BackendArg};
use lockstep::error::{Error, Result};
use lockstep::jobs::golden::{golden_check_on, golden_regen};
use lockstep::verify::golden::GoldenOutcome;
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum Action {
    /// Compare fresh runs with the committed goldens.
    Check {
        /// Repository root holding golden/.
        #[arg(long, default_value = ".")]
        root: PathBuf,
        #[arg(long)]
        json: bool,
        /// Only this backend's goldens (`mlx`: MLX's CPU device, `mlx-gpu`:
        /// its GPU device); default: the CPU reference's and MLX's CPU
        /// device's when compiled in (the GPU goldens only when asked for).
        #[arg(long, value_enum)]
        backend: Option<BackendArg>,
    },
    /// Rewrite the goldens (explicit, atomic, refused under CI).
    Regen {
        #[arg(long, default_value = ".")]
        root: PathBuf,
        /// Only this backend's goldens; default as for `check`.
        #[arg(long, value_enum)]
        backend: Option<BackendArg>,
    },
}

pub fn run(action: Action) -> Result<()> {
    match action {
        Action::Check {
            root,
            json,
            backend,
        } => check(&root, json, backend),
        Action::Regen { root, backend } => {
            for line in golden_regen(&root, backend.map(Into::into))? {
                println!("{line}");
            }
            Ok(())
        }
    }
}

fn check(root: &std::path::Path, json: bool, backend: Option<BackendArg>) -> Result<()> {
    let results = golden_check_on(root, backend.map(Into::into))?;
    let mut failed = 0;
    for (name, r) in &results {
        let ok = r.as_ref().is_ok_and(|o| o.passes());
        failed += usize::from(!ok);
        if json {
            continue;
        }
        match r {
            Ok(o @ (GoldenOutcome::NearTie { .. } | GoldenOutcome::TokensOnly { .. })) => {
                println!("{name}: ok, with a warning: {}", o.describe())
            }
            Ok(o) => println!(
                "{name}: {} {}",
                if ok { "ok" } else { "FAIL" },
                o.describe()
            ),
            Err(e) => println!("{name}: FAIL {e}"),
        }
    }
    if json {
        let v: Vec<_> = results
            .iter()
            .map(|(n, r)| serde_json::json!({"golden": n, "result": r}))
            .collect();
        print_json(&v);
    }
    match failed {
        0 => Ok(()),
        n => Err(Error::invalid(
            "golden check",
            format!("{n} golden(s) failed"),
        )),
    }
}
