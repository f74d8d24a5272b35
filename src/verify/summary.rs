//! One result row per check, rendered as a console table, JSON or markdown:
//! what `lockstep verify` prints and CI reads.

use crate::verify::case::Case;
use serde::{Deserialize, Serialize};

/// Which kind of check a row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Check {
    /// Fused vs graph at op level, against the contract.
    ParityOp,
    /// Fused vs graph at layer and logits level, truth-relative.
    ParityLayers,
    /// A backend's logits against the CPU reference.
    ParityLogits,
    /// The CPU reference against transformers.
    Oracle,
    /// Run-to-run spread of one path.
    Envelope,
    /// Fused-vs-graph distance inside the graph path's envelope.
    Containment,
    Golden,
}

impl Check {
    pub fn name(self) -> &'static str {
        match self {
            Check::ParityOp => "parity-op",
            Check::ParityLayers => "parity-layers",
            Check::ParityLogits => "parity-logits",
            Check::Oracle => "oracle",
            Check::Envelope => "envelope",
            Check::Containment => "containment",
            Check::Golden => "golden",
        }
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "status", content = "reason")]
pub enum Status {
    Pass,
    Fail,
    /// Could not run here (no GPU, backend not compiled); never counted as a pass.
    Skipped(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckResult {
    pub check: Check,
    /// Serialised as its id, `op(k=v,...)@backend`.
    pub case: Case,
    pub metric: String,
    pub value: Option<f64>,
    pub threshold: String,
    #[serde(flatten)]
    pub status: Status,
    pub detail: String,
}

impl CheckResult {
    pub fn skipped(check: Check, case: Case, reason: &str) -> Self {
        CheckResult {
            check,
            case,
            metric: "-".into(),
            value: None,
            threshold: "-".into(),
            status: Status::Skipped(reason.into()),
            detail: String::new(),
        }
    }
}

pub fn failed(results: &[CheckResult]) -> usize {
    results.iter().filter(|r| r.status == Status::Fail).count()
}

fn status_word(s: &Status) -> &'static str {
    match s {
        Status::Pass => "ok",
        Status::Fail => "FAIL",
        Status::Skipped(_) => "skipped",
    }
}

fn value_text(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.3e}"))
}

pub fn to_text(results: &[CheckResult]) -> String {
    let rows: Vec<[String; 6]> = results
        .iter()
        .map(|r| {
            [
                r.check.name().to_string(),
                r.case.id(),
                r.metric.clone(),
                value_text(r.value),
                r.threshold.clone(),
                match &r.status {
                    Status::Skipped(why) => format!("skipped: {why}"),
                    // A failure says why on its own line of the table.
                    Status::Fail if !r.detail.is_empty() => format!("FAIL: {}", r.detail),
                    s => status_word(s).to_string(),
                },
            ]
        })
        .collect();
    let head = ["check", "case", "metric", "value", "threshold", "status"];
    let mut w = head.map(str::len);
    for r in &rows {
        for (i, c) in r.iter().enumerate().take(5) {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |c: &[String; 6]| {
        format!(
            "{:<a$}  {:<b$}  {:<c$}  {:>d$}  {:<e$}  {}\n",
            c[0],
            c[1],
            c[2],
            c[3],
            c[4],
            c[5],
            a = w[0],
            b = w[1],
            c = w[2],
            d = w[3],
            e = w[4]
        )
    };
    let mut s = line(&head.map(String::from));
    for r in &rows {
        s += &line(r);
    }
    let pass = results.iter().filter(|r| r.status == Status::Pass).count();
    let skip = results
        .iter()
        .filter(|r| matches!(r.status, Status::Skipped(_)))
        .count();
    s += &format!(
        "{pass} passed, {} failed, {skip} skipped\n",
        failed(results)
    );
    s
}

pub fn to_markdown(results: &[CheckResult]) -> String {
    let mut s = String::from(
        "| check | case | metric | value | threshold | status |\n|---|---|---|---|---|---|\n",
    );
    for r in results {
        s += &format!(
            "| {} | `{}` | {} | {} | {} | {} |\n",
            r.check,
            r.case,
            r.metric,
            value_text(r.value),
            r.threshold,
            match &r.status {
                Status::Skipped(why) => format!("skipped: {why}"),
                st => status_word(st).to_string(),
            }
        );
    }
    s
}
