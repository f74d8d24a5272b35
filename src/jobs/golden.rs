//! Golden generation jobs: which goldens each backend has, a fresh run of
//! one, the check of every golden of the backends this build can run, and
//! the explicit, atomic regeneration (refused under CI).

use super::accelerator::{Cuda, Mlx, MlxGpu};
use super::{load, load_cpu, Accelerator, DEFAULT_PRESETS, DEFAULT_PROMPT};
use crate::backend::{compiled, Backend};
use crate::engine::generate::GenerateOptions;
use crate::engine::record::Fingerprint;
use crate::engine::Engine;
use crate::error::Result;
use crate::ident::{AttnPath, BackendKind, Numerics};
use crate::model::Model;
use crate::progress::Progress;
use crate::verify::case::{Case, Op};
use crate::verify::golden::{self, golden_name, golden_path, GoldenBody, GoldenOutcome};

/// Greedy steps and top-k recorded in each golden.
pub const GOLDEN_STEPS: usize = 32;
pub const GOLDEN_TOP_K: usize = 4;

/// One golden: a default preset on one backend, numerics and path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoldenCase {
    pub preset: &'static str,
    pub backend: BackendKind,
    pub numerics: Numerics,
    pub path: AttnPath,
}

impl GoldenCase {
    pub fn case(&self) -> Case {
        Case::new(Op::Golden, self.backend)
            .preset(self.preset)
            .numerics(self.numerics)
            .path(self.path)
    }

    /// The snapshot's name and file stem, `tiny__cpu__graph__bf16`.
    pub fn name(&self) -> String {
        golden_name(self.preset, self.backend, self.path, self.numerics)
    }
}

/// The goldens of `backend`: every default preset on both paths, in both
/// arithmetics on the CPU reference and in bf16 on the accelerators (which
/// do not compute in f64).
pub fn golden_cases(backend: BackendKind) -> Vec<GoldenCase> {
    let numerics: &[Numerics] = match backend {
        BackendKind::Cpu => &Numerics::ALL,
        BackendKind::Mlx | BackendKind::MlxGpu | BackendKind::Cuda => &[Numerics::Bf16],
    };
    let mut v = Vec::new();
    for preset in DEFAULT_PRESETS {
        for &numerics in numerics {
            for path in AttnPath::ALL {
                v.push(GoldenCase {
                    preset,
                    backend,
                    numerics,
                    path,
                });
            }
        }
    }
    v
}

/// The goldens of `backend`, or (`None`) of the CPU reference and MLX's CPU
/// device when compiled in. GPU goldens (CUDA, MLX's GPU) are checked only
/// when asked for: a GPU may be absent where such a build runs.
pub fn golden_set(backend: Option<BackendKind>) -> Result<Vec<GoldenCase>> {
    match backend {
        None => {
            let mut v = golden_cases(BackendKind::Cpu);
            if compiled(BackendKind::Mlx) {
                v.extend(golden_cases(BackendKind::Mlx));
            }
            Ok(v)
        }
        Some(b) if !compiled(b) => Err(crate::error::Error::BackendNotCompiled { backend: b }),
        Some(b) => Ok(golden_cases(b)),
    }
}

/// A fresh greedy run of a golden case on `e`, as a golden body, with its
/// fingerprint.
pub fn golden_run_on<B: Backend>(
    e: &Engine<B>,
    case: &GoldenCase,
) -> Result<(GoldenBody, Fingerprint)> {
    let opts = GenerateOptions {
        max_tokens: GOLDEN_STEPS,
        path: case.path,
        ..Default::default()
    };
    let run = e.generate(&DEFAULT_PROMPT, &opts, &mut |_| {})?;
    Ok((
        GoldenBody::from_run(case.preset, 0, &run, GOLDEN_TOP_K),
        run.fingerprint,
    ))
}

/// Fresh runs of `cases` in order, each engine loaded once for the cases
/// that share its backend, preset and numerics.
pub fn golden_runs(cases: &[GoldenCase]) -> Result<Vec<(GoldenBody, Fingerprint)>> {
    fn runs<B: Backend>(
        e: &Engine<B>,
        group: &[GoldenCase],
    ) -> Result<Vec<(GoldenBody, Fingerprint)>> {
        group.iter().map(|c| golden_run_on(e, c)).collect()
    }
    let mut out = Vec::with_capacity(cases.len());
    let mut p = Progress::new("goldens", cases.len());
    for group in cases
        .chunk_by(|a, b| (a.backend, a.preset, a.numerics) == (b.backend, b.preset, b.numerics))
    {
        let first = group[0];
        let model = Model::open(&format!("synth:{}:0", first.preset))?;
        out.extend(match first.backend {
            BackendKind::Cpu => runs(&load_cpu(&model, first.numerics)?, group)?,
            BackendKind::Mlx => runs(&load(&model, Mlx::open()?)?, group)?,
            BackendKind::MlxGpu => runs(&load(&model, MlxGpu::open()?)?, group)?,
            BackendKind::Cuda => runs(&load(&model, Cuda::open()?)?, group)?,
        });
        p.set(out.len());
    }
    Ok(out)
}

/// The committed golden of `now` under `root`, compared with it, `now`
/// having run as `fp` says (its device class decides whether values are
/// judged).
pub fn against_committed(
    root: &std::path::Path,
    now: &GoldenBody,
    fp: &Fingerprint,
) -> Result<GoldenOutcome> {
    let file = golden::load_file(&golden_path(root, &now.name()))?;
    golden::compare_on(&file, now, golden::run_device_class(fp).as_deref())
}

/// Checks the goldens of `backend` (`None`: as `golden_set`) under `root`:
/// (name, outcome or error text).
pub fn golden_check_on(
    root: &std::path::Path,
    backend: Option<BackendKind>,
) -> Result<Vec<(String, std::result::Result<GoldenOutcome, String>)>> {
    let cases = golden_set(backend)?;
    Ok(golden_runs(&cases)?
        .into_iter()
        .map(|(now, fp)| {
            let res = against_committed(root, &now, &fp).map_err(|e| e.to_string());
            (now.name(), res)
        })
        .collect())
}

/// Whether the environment says this is a CI run.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Rewrites the goldens under `root` (each through a temporary file and a
/// rename, so a golden is replaced only once its successor is complete) and
/// returns a line per golden saying what changed. Refuses under CI.
pub fn golden_regen(root: &std::path::Path, backend: Option<BackendKind>) -> Result<Vec<String>> {
    if under_ci() {
        return Err(crate::error::Error::invalid(
            "golden regen",
            "refusing to rewrite goldens under CI (CI is set); regenerate on a workstation and commit",
        ));
    }
    let cases = golden_set(backend)?;
    let mut lines = Vec::new();
    for (now, fp) in golden_runs(&cases)? {
        let name = now.name();
        let path = golden_path(root, &name);
        let change = match golden::load(&path) {
            Err(_) => "new".to_string(),
            Ok(old) => match golden::compare(&old, &now) {
                Ok(GoldenOutcome::Identical) => "unchanged".into(),
                Ok(o @ (GoldenOutcome::ValuesMoved { .. } | GoldenOutcome::TokensOnly { .. })) => {
                    o.describe()
                }
                Ok(
                    GoldenOutcome::NearTie { step, margin, .. }
                    | GoldenOutcome::Regression { step, margin, .. },
                ) => {
                    format!("tokens changed from step {step} (recorded margin {margin:.4})")
                }
                Err(e) => format!("replaced: {e}"),
            },
        };
        let text = golden::render_snap(&now, &fp);
        crate::util::write_atomically(&path, |w| std::io::Write::write_all(w, text.as_bytes()))?;
        lines.push(format!("{name}: {change}"));
    }
    Ok(lines)
}
