//! Golden generations: committed snapshots of greedy runs, one per
//! (preset, backend, path, numerics), in insta's `.snap` format so that
//! `cargo insta review` works on them too.
//!
//! The body is a JSON summary (token ids, margins and top-k logits rounded
//! with intent); the numeric fingerprint goes in the header's `info`, which
//! is shown but not compared. A golden of another model hash, preset or
//! prompt is refused, never compared. A token change passes (with a warning)
//! only at a recorded near-tie.

use crate::engine::record::{Fingerprint, RecordedRun};
use crate::error::{Error, Result};
use crate::ident::{AttnPath, BackendKind, Numerics};
use crate::verify::tolerances::{tol, Tol};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Logits and margins are kept to 1e-4: finer than a bf16 quantum at any
/// logit magnitude that matters, coarse enough to read.
fn round4(x: f32) -> f64 {
    ((x as f64) * 1e4).round() / 1e4
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoldenStep {
    pub step: usize,
    pub token: u32,
    pub margin: f64,
    pub top: Vec<(u32, f64)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoldenBody {
    pub preset: String,
    pub seed: u64,
    pub model_hash: String,
    pub backend: BackendKind,
    pub numerics: Numerics,
    pub path: AttnPath,
    pub prompt: Vec<u32>,
    pub tokens: Vec<u32>,
    pub steps: Vec<GoldenStep>,
}

impl GoldenBody {
    pub fn from_run(preset: &str, seed: u64, run: &RecordedRun, top_k: usize) -> Self {
        let f = &run.fingerprint;
        GoldenBody {
            preset: preset.into(),
            seed,
            model_hash: f.model_hash.clone(),
            backend: f.backend,
            numerics: f.numerics,
            path: f.path,
            prompt: run.prompt.clone(),
            tokens: run.tokens.clone(),
            steps: run
                .steps
                .iter()
                .enumerate()
                .map(|(i, s)| GoldenStep {
                    step: i,
                    token: s.token,
                    margin: round4(s.margin),
                    top: s
                        .top
                        .iter()
                        .take(top_k)
                        .map(|&(t, v)| (t, round4(v)))
                        .collect(),
                })
                .collect(),
        }
    }

    /// `tiny__cpu__graph__bf16`: the snapshot name and file stem.
    pub fn name(&self) -> String {
        golden_name(&self.preset, self.backend, self.path, self.numerics)
    }

    pub fn render(&self) -> String {
        serde_json::to_string_pretty(self).expect("golden serialises")
    }
}

pub fn golden_name(
    preset: &str,
    backend: BackendKind,
    path: AttnPath,
    numerics: Numerics,
) -> String {
    format!("{preset}__{backend}__{path}__{numerics}")
}

/// The folder holding golden snapshots.
pub fn golden_dir(root: &Path) -> PathBuf {
    root.join("golden")
}

pub fn golden_path(root: &Path, name: &str) -> PathBuf {
    golden_dir(root).join(format!("{name}.snap"))
}

/// insta's file format: a `---` header (source, expression, info), then the body.
pub fn render_snap(body: &GoldenBody, fp: &Fingerprint) -> String {
    let mut s = String::from("---\nsource: tests/goldens.rs\nexpression: body\ninfo:\n");
    let mut info: Vec<(String, String)> = vec![
        ("backend".into(), fp.backend.name().into()),
        ("device".into(), fp.device.clone()),
        ("numerics".into(), fp.numerics.name().into()),
        ("path".into(), fp.path.name().into()),
        ("model_origin".into(), fp.model_origin.clone()),
        ("model_hash".into(), fp.model_hash.clone()),
        ("lockstep_version".into(), fp.lockstep_version.clone()),
    ];
    info.extend(
        fp.details
            .iter()
            .map(|(k, v)| (format!("detail_{k}"), v.clone())),
    );
    info.sort();
    for (k, v) in info {
        s += &format!("  {k}: {}\n", serde_json::to_string(&v).expect("string"));
    }
    s += "---\n";
    s += &body.render();
    s.push('\n');
    s
}

/// The body of a `.snap` file.
pub fn parse_snap(text: &str, path: &Path) -> Result<GoldenBody> {
    let bad = |p: &str| Error::invalid(path.display().to_string(), p.to_string());
    let rest = text
        .strip_prefix("---\n")
        .ok_or_else(|| bad("not a snapshot: no `---` header"))?;
    let end = rest
        .find("\n---\n")
        .ok_or_else(|| bad("snapshot header is not closed by `---`"))?;
    serde_json::from_str(&rest[end + 5..])
        .map_err(|e| bad(&format!("golden body is not a valid golden: {e}")))
}

pub fn load(path: &Path) -> Result<GoldenBody> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_snap(&text, path)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "outcome")]
pub enum GoldenOutcome {
    /// Tokens, margins and top-k logits all as recorded.
    Identical,
    /// Tokens as recorded; some recorded numbers moved (first step given).
    ValuesMoved { step: usize },
    /// Tokens changed first at a recorded near-tie: passes with a warning.
    NearTie {
        step: usize,
        margin: f64,
        threshold: f64,
    },
    /// Tokens changed first at a confident step: fails.
    Regression {
        step: usize,
        margin: f64,
        threshold: f64,
    },
}

impl GoldenOutcome {
    pub fn passes(&self) -> bool {
        !matches!(
            self,
            GoldenOutcome::Regression { .. } | GoldenOutcome::ValuesMoved { .. }
        )
    }
}

/// Compares a fresh run against a golden. Identity mismatches are errors.
/// Near-tie threshold: `near_tie_margin_bf16` for bf16 runs, `_f32` otherwise.
pub fn compare(golden: &GoldenBody, now: &GoldenBody) -> Result<GoldenOutcome> {
    for (what, a, b) in [
        (
            "model hash",
            golden.model_hash.as_str(),
            now.model_hash.as_str(),
        ),
        ("preset", &golden.preset, &now.preset),
        ("backend", golden.backend.name(), now.backend.name()),
        ("numerics", golden.numerics.name(), now.numerics.name()),
        ("path", golden.path.name(), now.path.name()),
    ] {
        if a != b {
            return Err(Error::invalid(
                format!("golden {}", golden.name()),
                format!("recorded for {what} {a}, this run is {b}: refusing to compare"),
            ));
        }
    }
    if golden.prompt != now.prompt {
        return Err(Error::invalid(
            format!("golden {}", golden.name()),
            format!(
                "recorded for prompt {:?}, this run used {:?}: refusing to compare",
                golden.prompt, now.prompt
            ),
        ));
    }
    let threshold = tol(match golden.numerics {
        Numerics::Bf16 => Tol::NearTieMarginBf16,
        Numerics::F64 => Tol::NearTieMarginF32,
    });
    if let Some(step) = golden
        .tokens
        .iter()
        .zip(&now.tokens)
        .position(|(a, b)| a != b)
    {
        let margin = golden.steps[step].margin.min(now.steps[step].margin);
        return Ok(if margin < threshold {
            GoldenOutcome::NearTie {
                step,
                margin,
                threshold,
            }
        } else {
            GoldenOutcome::Regression {
                step,
                margin,
                threshold,
            }
        });
    }
    if golden.tokens.len() != now.tokens.len() {
        let step = golden.tokens.len().min(now.tokens.len());
        return Ok(GoldenOutcome::Regression {
            step,
            margin: f64::INFINITY,
            threshold,
        });
    }
    Ok(
        match golden
            .steps
            .iter()
            .zip(&now.steps)
            .position(|(a, b)| a != b)
        {
            None => GoldenOutcome::Identical,
            Some(step) => GoldenOutcome::ValuesMoved { step },
        },
    )
}
