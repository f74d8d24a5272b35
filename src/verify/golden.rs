//! Golden generations: committed snapshots of greedy runs, one per
//! (preset, backend, path, numerics), in insta's `.snap` format so that
//! `cargo insta review` works on them too.
//!
//! The body is a JSON summary (token ids, margins and top-k logits rounded
//! with intent); the numeric fingerprint goes in the header's `info`. A
//! file is validated when it is read (one step record per token, margins
//! finite and >= 0, top-k sorted and led by the token, the case matching
//! the file's name), so an edited or truncated golden is an error naming
//! the file and field, never a weaker check. A golden of another model
//! hash, preset or prompt is refused, never compared. A token change passes
//! (with a warning) only at a recorded near-tie; on the device class the
//! golden was recorded on, every recorded value must reproduce exactly (at
//! the file's 1e-4 rounding), and the first one that moved is reported; on
//! another device class (the header says which) values are not judged and
//! the outcome says so.

use crate::engine::record::{Fingerprint, RecordedRun};
use crate::error::{Error, Result};
use crate::ident::{AttnPath, BackendKind, Numerics};
use crate::verify::tolerances::{tol, Tol};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
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

/// A golden file: its body and the header's `info` (the fingerprint it
/// was recorded with).
#[derive(Debug, Clone, PartialEq)]
pub struct GoldenFile {
    pub body: GoldenBody,
    pub info: BTreeMap<String, String>,
}

impl GoldenFile {
    /// What the golden's values can be reproduced bit for bit on (see
    /// `device_class`), from its header.
    pub fn device_class(&self) -> Option<String> {
        device_class(self.body.backend, |k| self.info.get(k).cloned())
    }
}

/// The class of device whose runs reproduce each other's values exactly: the
/// CPU architecture for the CPU reference and MLX's CPU device, the compute
/// capability for lockstep's CUDA kernels and MLX's CUDA build. `detail`
/// reads a fingerprint detail by its header key (`detail_...`).
pub fn device_class(
    backend: BackendKind,
    detail: impl Fn(&str) -> Option<String>,
) -> Option<String> {
    let arch = || detail("detail_arch").map(|a| format!("{backend} on {a}"));
    match backend {
        BackendKind::Cpu | BackendKind::Mlx => arch(),
        BackendKind::Cuda => {
            detail("detail_compute_capability").map(|c| format!("cuda on compute capability {c}"))
        }
        BackendKind::MlxGpu => detail("detail_gpu_architecture")
            .map(|a| format!("mlx-gpu on {a}"))
            .or_else(arch),
    }
}

/// The device class of a run's fingerprint (as `device_class`).
pub fn run_device_class(fp: &Fingerprint) -> Option<String> {
    device_class(fp.backend, |k| {
        k.strip_prefix("detail_")
            .and_then(|d| fp.details.get(d).cloned())
    })
}

/// A golden file's contents, validated; `path` names it in errors, and its
/// file stem must be the golden's case name.
pub fn parse_snap(text: &str, path: &Path) -> Result<GoldenBody> {
    parse_file(text, path).map(|f| f.body)
}

/// `parse_snap` with the header's `info` kept.
pub fn parse_file(text: &str, path: &Path) -> Result<GoldenFile> {
    let bad = |p: &str| Error::invalid(path.display().to_string(), p.to_string());
    // A checkout that turned line ends into CRLF holds the same golden.
    let text = text.replace("\r\n", "\n");
    let rest = text
        .strip_prefix("---\n")
        .ok_or_else(|| bad("not a snapshot: no `---` header"))?;
    let end = rest
        .find("\n---\n")
        .ok_or_else(|| bad("snapshot header is not closed by `---`"))?;
    let mut info = BTreeMap::new();
    let mut in_info = false;
    for line in rest[..end].lines() {
        if line == "info:" {
            in_info = true;
        } else if let (true, Some(kv)) = (in_info, line.strip_prefix("  ")) {
            let (k, v) = kv
                .split_once(": ")
                .ok_or_else(|| bad(&format!("header line {line:?} is not `key: value`")))?;
            let v: String = serde_json::from_str(v)
                .map_err(|e| bad(&format!("header field `{k}`: not a JSON string ({e})")))?;
            info.insert(k.to_string(), v);
        } else {
            in_info = false;
        }
    }
    let body: GoldenBody = serde_json::from_str(&rest[end + 5..])
        .map_err(|e| bad(&format!("golden body is not a valid golden: {e}")))?;
    validate(&body, &info, path)?;
    Ok(GoldenFile { body, info })
}

/// Rounding `a - b` and rounding `a` and `b` each to 1e-4 (`round4`) give
/// results at most 1.5e-4 apart; a recorded margin further than this from
/// its recorded top two was not written by `from_run` (the 1e-5 covers
/// the margin's f32 rounding before its own `round4`).
const MARGIN_ROUNDING_SLACK: f64 = 1.5e-4 + 1e-5;

/// A golden as `from_run` writes it and nothing weaker: one step record per
/// token, in order; each step's margin finite and >= 0 and its top-k
/// finite, sorted (ties by lower id), led by the step's token, the margin
/// its top two's difference; the header's backend, numerics and path, and
/// the file name, those of the body.
pub fn validate(body: &GoldenBody, info: &BTreeMap<String, String>, path: &Path) -> Result<()> {
    let bad = |field: String, p: String| {
        Error::invalid(path.display().to_string(), format!("field `{field}`: {p}"))
    };
    let name = body.name();
    if path.file_stem().and_then(|s| s.to_str()) != Some(name.as_str()) {
        return Err(bad(
            "preset/backend/path/numerics".into(),
            format!("the body is golden {name}, not the one its file name says"),
        ));
    }
    for (key, want) in [
        ("backend", body.backend.name()),
        ("numerics", body.numerics.name()),
        ("path", body.path.name()),
        ("model_hash", body.model_hash.as_str()),
    ] {
        match info.get(key) {
            Some(v) if v == want => {}
            other => {
                return Err(bad(
                    format!("info.{key}"),
                    format!("the header says {other:?}, the body {want:?}"),
                ))
            }
        }
    }
    if body.tokens.is_empty() {
        return Err(bad("tokens".into(), "no tokens recorded".into()));
    }
    if body.steps.len() != body.tokens.len() {
        return Err(bad(
            "steps".into(),
            format!(
                "{} step records for {} tokens (one per token)",
                body.steps.len(),
                body.tokens.len()
            ),
        ));
    }
    for (i, (st, &token)) in body.steps.iter().zip(&body.tokens).enumerate() {
        let f = |what: &str| format!("steps[{i}].{what}");
        if st.step != i {
            return Err(bad(f("step"), format!("{} where {i} belongs", st.step)));
        }
        if st.token != token {
            return Err(bad(
                f("token"),
                format!("{} but tokens[{i}] is {token}", st.token),
            ));
        }
        if !st.margin.is_finite() || st.margin < 0.0 {
            return Err(bad(
                f("margin"),
                format!("{} (a margin is finite and >= 0)", st.margin),
            ));
        }
        let Some(&(first, _)) = st.top.first() else {
            return Err(bad(f("top"), "empty".into()));
        };
        if first != token {
            return Err(bad(
                f("top"),
                format!("led by token {first}, not the step's token {token}"),
            ));
        }
        if let Some(&(id, v)) = st.top.iter().find(|t| !t.1.is_finite()) {
            return Err(bad(f("top"), format!("token {id} has logit {v}")));
        }
        if let Some(w) = st
            .top
            .windows(2)
            .position(|w| w[1].1 > w[0].1 || (w[1].1 == w[0].1 && w[1].0 < w[0].0))
        {
            return Err(bad(
                f("top"),
                format!(
                    "not sorted (largest first, ties by lower id) at entry {}",
                    w + 1
                ),
            ));
        }
        if let [a, b, ..] = st.top[..] {
            if (st.margin - (a.1 - b.1)).abs() > MARGIN_ROUNDING_SLACK {
                return Err(bad(
                    f("margin"),
                    format!("{} but the top two differ by {:.4}", st.margin, a.1 - b.1),
                ));
            }
        }
    }
    Ok(())
}

pub fn load(path: &Path) -> Result<GoldenBody> {
    load_file(path).map(|f| f.body)
}

pub fn load_file(path: &Path) -> Result<GoldenFile> {
    let text = crate::util::read_text_bounded(path, crate::util::limits::GOLDEN)?;
    parse_file(&text, path)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "outcome")]
pub enum GoldenOutcome {
    /// Tokens, margins and top-k logits all as recorded.
    Identical,
    /// Tokens as recorded; a recorded value moved: the first one, at `step`
    /// (`entry` of its top-k: `token`'s logit, or the margin when `token`
    /// is None), on the device class the golden was recorded on.
    ValuesMoved {
        step: usize,
        entry: usize,
        token: Option<u32>,
        recorded: f64,
        now: f64,
    },
    /// Tokens as recorded; values not judged, since this run's device class
    /// differs from the golden's (passes with a warning).
    TokensOnly { recorded_on: String, run_on: String },
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

    /// One line for tables and logs.
    pub fn describe(&self) -> String {
        match self {
            GoldenOutcome::Identical => "identical".into(),
            GoldenOutcome::ValuesMoved {
                step,
                entry,
                token,
                recorded,
                now,
            } => match token {
                None => format!("tokens held; step {step}: margin {recorded} recorded, {now} now"),
                Some(t) => format!(
                    "tokens held; step {step}, top-k entry {entry} (token {t}): logit {recorded} recorded, {now} now"
                ),
            },
            GoldenOutcome::TokensOnly { recorded_on, run_on } => format!(
                "tokens held; values not judged: recorded on {recorded_on}, this run on {run_on}"
            ),
            GoldenOutcome::NearTie {
                step,
                margin,
                threshold,
            } => format!("tokens part at step {step}, a recorded near-tie (margin {margin:.4} < {threshold})"),
            GoldenOutcome::Regression {
                step,
                margin,
                threshold,
            } => format!("tokens part at step {step}, margin {margin:.4} >= {threshold}: a regression"),
        }
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
        // A step without a record (only an unvalidated body lacks one)
        // has no margin to excuse the change.
        let margin_at = |b: &GoldenBody| b.steps.get(step).map_or(f64::NAN, |s| s.margin);
        let margin = margin_at(golden).min(margin_at(now));
        if margin.is_nan() || margin < 0.0 {
            return Ok(GoldenOutcome::Regression {
                step,
                margin,
                threshold,
            });
        }
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
    Ok(first_moved_value(golden, now).unwrap_or(GoldenOutcome::Identical))
}

/// The first recorded value of `golden` that `now` does not reproduce
/// exactly: a step's margin, a top-k entry's token or logit, or a step or
/// entry missing on one side.
fn first_moved_value(golden: &GoldenBody, now: &GoldenBody) -> Option<GoldenOutcome> {
    let n = golden.steps.len().max(now.steps.len());
    for step in 0..n {
        let (Some(g), Some(w)) = (golden.steps.get(step), now.steps.get(step)) else {
            return Some(GoldenOutcome::ValuesMoved {
                step,
                entry: 0,
                token: None,
                recorded: golden.steps.get(step).map_or(f64::NAN, |s| s.margin),
                now: now.steps.get(step).map_or(f64::NAN, |s| s.margin),
            });
        };
        if g.margin.to_bits() != w.margin.to_bits() {
            return Some(GoldenOutcome::ValuesMoved {
                step,
                entry: 0,
                token: None,
                recorded: g.margin,
                now: w.margin,
            });
        }
        for entry in 0..g.top.len().max(w.top.len()) {
            let (a, b) = (g.top.get(entry), w.top.get(entry));
            if a.map(|t| (t.0, t.1.to_bits())) != b.map(|t| (t.0, t.1.to_bits())) {
                return Some(GoldenOutcome::ValuesMoved {
                    step,
                    entry,
                    token: a.or(b).map(|t| t.0),
                    recorded: a.map_or(f64::NAN, |t| t.1),
                    now: b
                        .filter(|t| Some(t.0) == a.map(|a| a.0))
                        .map_or(f64::NAN, |t| t.1),
                });
            }
        }
    }
    None
}

/// `compare` of a golden file with a run whose device class is `run_on`:
/// where the golden was recorded on another class, moved values are not
/// judged (`TokensOnly`), while token changes are judged as everywhere.
pub fn compare_on(
    file: &GoldenFile,
    now: &GoldenBody,
    run_on: Option<&str>,
) -> Result<GoldenOutcome> {
    let out = compare(&file.body, now)?;
    let recorded_on = file.device_class();
    Ok(match (out, recorded_on, run_on) {
        (GoldenOutcome::ValuesMoved { .. }, Some(g), Some(r)) if g != r => {
            GoldenOutcome::TokensOnly {
                recorded_on: g,
                run_on: r.to_string(),
            }
        }
        (out, ..) => out,
    })
}
