//! Fused vs graph parity, three ways (fused, graph, f64 truth), at op level
//! (q, k, v of one layer from the same input) and at layer / logits level
//! (teacher-forced runs). Every result says which side is nearer truth.
//!
//! Op level is judged by the absolute contract (`fused_vs_graph_rms`, or the
//! f64 formula check in truth mode). Layer and logits level are judged by the
//! truth-relative rule (`truth_relative_factor`) wherever the run-to-run
//! envelope is zero: two bf16 paths that differ by one ulp in q drift a bf16
//! noise floor apart downstream, so an absolute bound there measures the
//! model's conditioning, not the fused path.

use crate::backend::AttnPath;
use crate::engine::LayerQkv;
use crate::verify::case::Case;
use crate::verify::metrics::{diff, Diff};
use crate::verify::tolerances::{tol, Tol};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Nearer {
    Fused,
    Graph,
    Tie,
}

fn nearer(fused_err: f64, graph_err: f64) -> Nearer {
    if fused_err < graph_err {
        Nearer::Fused
    } else if graph_err < fused_err {
        Nearer::Graph
    } else {
        Nearer::Tie
    }
}

/// One tensor's three-way comparison.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TensorParity {
    pub tensor: String,
    pub fused_vs_graph: Diff,
    pub graph_vs_truth: Option<Diff>,
    pub fused_vs_truth: Option<Diff>,
    pub nearer_truth: Option<Nearer>,
    pub pass: bool,
    /// The graph path is itself as far from truth as `truth_rel_rms_ceiling`
    /// (or not finite against it): the row fails, whatever fused-vs-graph
    /// says, since two equally broken paths are not a tie.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub far_from_truth: bool,
}

impl TensorParity {
    /// Applies the sanity ceiling after the row's own rule set `pass`.
    fn judge_sanity(mut self) -> Self {
        if let Some(g) = &self.graph_vs_truth {
            let ceiling = tol(Tol::TruthRelRmsCeiling);
            self.far_from_truth = !(g.finite_ok() && g.rel_rms < ceiling);
            self.pass &= !self.far_from_truth;
        }
        self
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LevelParity {
    /// `layer 3`, `logits`.
    pub level: String,
    pub tensors: Vec<TensorParity>,
}

/// What a parity report was judged by. Serialised as its text (the form
/// reports had before it was a type), parsed back by `TryFrom<String>`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum ParityRule {
    /// Every tensor's RMS(fused - graph) below an absolute tolerance: the op
    /// contract, or the f64 formula check at every level.
    Rms { tolerance: Tol, limit: f64 },
    /// At each level fused-truth <= `factor` x graph-truth
    /// (`truth_relative_factor`), where an absolute bound would measure the
    /// model's conditioning rather than the fused path.
    TruthRelative { factor: f64 },
}

impl std::fmt::Display for ParityRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParityRule::Rms { tolerance, limit } => write!(f, "RMS < {tolerance} = {limit:e}"),
            ParityRule::TruthRelative { factor } => write!(
                f,
                "fused-truth <= truth_relative_factor ({factor}) x graph-truth"
            ),
        }
    }
}

impl From<ParityRule> for String {
    fn from(r: ParityRule) -> String {
        r.to_string()
    }
}

impl TryFrom<String> for ParityRule {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let bad = || format!("not a parity rule: {s:?}");
        if let Some(rest) = s.strip_prefix("RMS < ") {
            let (name, limit) = rest.split_once(" = ").ok_or_else(bad)?;
            return Ok(ParityRule::Rms {
                tolerance: Tol::from_name(name).ok_or_else(bad)?,
                limit: limit.parse().map_err(|_| bad())?,
            });
        }
        let factor = s
            .strip_prefix("fused-truth <= truth_relative_factor (")
            .and_then(|r| r.strip_suffix(") x graph-truth"))
            .ok_or_else(bad)?;
        Ok(ParityRule::TruthRelative {
            factor: factor.parse().map_err(|_| bad())?,
        })
    }
}

impl ParityRule {
    fn rms(tolerance: Tol) -> Self {
        ParityRule::Rms {
            tolerance,
            limit: tol(tolerance),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ParityReport {
    pub case: Case,
    pub rule: ParityRule,
    pub levels: Vec<LevelParity>,
    pub pass: bool,
    /// Fingerprints of the runs compared (graph, fused; truth last).
    #[serde(default)]
    pub fingerprints: Vec<crate::engine::record::Fingerprint>,
}

impl ParityReport {
    /// The first failing (level, tensor), if any.
    pub fn first_failure(&self) -> Option<(&str, &TensorParity)> {
        self.levels
            .iter()
            .flat_map(|l| l.tensors.iter().map(move |t| (l.level.as_str(), t)))
            .find(|(_, t)| !t.pass)
    }

    pub fn worst_fused_vs_graph_rms(&self) -> f64 {
        self.levels
            .iter()
            .flat_map(|l| &l.tensors)
            .map(|t| t.fused_vs_graph.rms)
            .fold(0.0, f64::max)
    }

    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{}  [{}]  {}",
            self.case,
            self.rule,
            if self.pass { "PASS" } else { "FAIL" }
        );
        for f in &self.fingerprints {
            let _ = writeln!(
                s,
                "  run {} on {} (model {}, lockstep {})",
                f.label(),
                f.device,
                f.model_hash,
                f.lockstep_version
            );
        }
        let _ = writeln!(
            s,
            "level     tensor  fused-graph  graph-truth  fused-truth  nearer  ok"
        );
        for l in &self.levels {
            for t in &l.tensors {
                let f = |d: &Option<Diff>| d.map_or("-".to_string(), |d| format!("{:.3e}", d.rms));
                let _ = writeln!(
                    s,
                    "{:<9} {:<7} {:.3e}    {:<11}  {:<11}  {:<6}  {}",
                    l.level,
                    t.tensor,
                    t.fused_vs_graph.rms,
                    f(&t.graph_vs_truth),
                    f(&t.fused_vs_truth),
                    t.nearer_truth.map_or("-", |n| match n {
                        Nearer::Fused => "fused",
                        Nearer::Graph => "graph",
                        Nearer::Tie => "tie",
                    }),
                    match (t.pass, t.far_from_truth) {
                        (true, _) => "ok",
                        (false, true) => "FAIL: graph-truth rel RMS >= truth_rel_rms_ceiling",
                        (false, false) => "FAIL",
                    }
                );
            }
        }
        s
    }
}

fn three_way(name: &str, fused: &[f64], graph: &[f64], truth: Option<&[f64]>) -> TensorParity {
    let fg = diff(fused, graph);
    let (gt, ft) = match truth {
        Some(t) => (Some(diff(graph, t)), Some(diff(fused, t))),
        None => (None, None),
    };
    TensorParity {
        tensor: name.to_string(),
        nearer_truth: gt.zip(ft).map(|(g, f)| nearer(f.rms, g.rms)),
        fused_vs_graph: fg,
        graph_vs_truth: gt,
        fused_vs_truth: ft,
        pass: false,
        far_from_truth: false,
    }
}

/// Op level: q, k, v of each layer by both paths from the same input, with
/// optional truth for the same inputs. Judged by the absolute `tolerance`
/// (`fused_vs_graph_rms`, or `fused_vs_graph_f64_rms`).
pub fn op_parity(
    case: Case,
    rec: &[LayerQkv],
    truth: Option<&[[Vec<f64>; 3]]>,
    tolerance: Tol,
) -> ParityReport {
    let limit = tol(tolerance);
    let levels: Vec<LevelParity> = rec
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let get = |p: AttnPath| {
                &l.by_path
                    .iter()
                    .find(|(q, _)| *q == p)
                    .expect("both paths recorded")
                    .1
            };
            let (g, f) = (get(AttnPath::Graph), get(AttnPath::Fused));
            let tensors = ["q", "k", "v"]
                .iter()
                .enumerate()
                .map(|(j, name)| {
                    let mut t = three_way(name, &f[j], &g[j], truth.map(|t| t[i][j].as_slice()));
                    t.pass = t.fused_vs_graph.finite_ok() && t.fused_vs_graph.rms < limit;
                    t.judge_sanity()
                })
                .collect();
            LevelParity {
                level: format!("layer {}", l.layer),
                tensors,
            }
        })
        .collect();
    let pass = levels.iter().all(|l| l.tensors.iter().all(|t| t.pass));
    ParityReport {
        case,
        rule: ParityRule::rms(tolerance),
        levels,
        pass,
        fingerprints: Vec::new(),
    }
}

/// Layer and logits level: one entry per level (layer outputs, then logits),
/// each `[tokens * width]`. With `truth`, the rule is truth-relative; a
/// `strict` tolerance instead demands an absolute bound (f64 mode).
pub fn run_parity(
    case: Case,
    fused: &[Vec<f64>],
    graph: &[Vec<f64>],
    truth: Option<&[Vec<f64>]>,
    strict: Option<Tol>,
) -> ParityReport {
    let factor = tol(Tol::TruthRelativeFactor);
    let n = graph.len();
    let levels: Vec<LevelParity> = (0..n)
        .map(|i| {
            let level = if i + 1 == n {
                "logits".to_string()
            } else {
                format!("layer {i}")
            };
            let mut t = three_way("out", &fused[i], &graph[i], truth.map(|t| t[i].as_slice()));
            let finite = t.fused_vs_graph.finite_ok();
            t.pass = finite
                && match (strict, &t.graph_vs_truth, &t.fused_vs_truth) {
                    (Some(strict), _, _) => t.fused_vs_graph.rms < tol(strict),
                    (None, Some(g), Some(f)) => f.finite_ok() && f.rms <= factor * g.rms,
                    (None, _, _) => false,
                };
            LevelParity {
                level,
                tensors: vec![t.judge_sanity()],
            }
        })
        .collect();
    let pass = levels.iter().all(|l| l.tensors.iter().all(|t| t.pass));
    ParityReport {
        case,
        rule: match strict {
            Some(strict) => ParityRule::rms(strict),
            None => ParityRule::TruthRelative { factor },
        },
        levels,
        pass,
        fingerprints: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two paths equally far from truth tie under the truth-relative rule;
    /// the ceiling fails them. The control: the same paths near truth pass.
    #[test]
    fn both_paths_far_from_truth_fail_rather_than_tie() {
        let case = Case::parse("layers(preset=tiny,numerics=bf16,tokens=4)@cpu").unwrap();
        let truth = vec![vec![1.0, -2.0, 3.0, 0.5]];
        let broken = vec![vec![2.8e40, -1.0e40, 3.0e40, 7.0e39]];
        let r = run_parity(case.clone(), &broken, &broken, Some(&truth), None);
        let t = &r.levels[0].tensors[0];
        assert!(!r.pass && t.far_from_truth, "{}", r.to_text());
        assert!(
            r.to_text().contains("truth_rel_rms_ceiling"),
            "{}",
            r.to_text()
        );
        let near = vec![vec![1.0, -2.0, 3.0, 0.5078125]];
        let r = run_parity(case, &near, &near, Some(&truth), None);
        assert!(
            r.pass && !r.levels[0].tensors[0].far_from_truth,
            "{}",
            r.to_text()
        );
    }

    #[test]
    fn a_rule_serialises_as_its_text_and_parses_back() {
        for r in [
            ParityRule::rms(Tol::FusedVsGraphRms),
            ParityRule::TruthRelative { factor: 2.0 },
        ] {
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(json, format!("{:?}", r.to_string()));
            assert_eq!(serde_json::from_str::<ParityRule>(&json).unwrap(), r);
        }
        assert!(ParityRule::try_from("RMS < no_such_rms = 1e-3".to_string()).is_err());
    }
}
