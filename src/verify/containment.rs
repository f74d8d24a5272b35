//! Is the fused path inside the graph path's own run-to-run envelope? From
//! N runs of each path on one engine: the fused runs' distances from the
//! graph path against the graph runs' distances from one another, and on
//! greedy runs also the step where fused parts from graph against the step
//! where graph parts from itself.
//!
//! Each rule compares the *median* fused run with an *extreme quantile* of
//! the graph runs (`containment_quantile`, docs/tolerances.md): were the
//! fused path just one more graph run, its median would fall past the
//! graph's 10% tail in about 0.2% of judgements at N = 20 (a max against a
//! max would fail half of them), while a fused path that is systematically
//! farther moves its median past the tail.

use crate::verify::envelope::{Containment, ContainmentRule, Envelope};
use crate::verify::metrics::diff;
use crate::verify::tolerances::{tol, Tol};
use serde::{Deserialize, Serialize};

/// The element at `floor(q (n - 1))` of the ascending sample (the lower
/// `q`-quantile); `None` for an empty sample.
pub fn lower_quantile(v: &[f64], q: f64) -> Option<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    (n > 0).then(|| s[((q.clamp(0.0, 1.0) * (n - 1) as f64).floor() as usize).min(n - 1)])
}

/// One greedy run: its tokens and, per step, the values recorded (full
/// logits or the top few, the same choice for every run).
#[derive(Debug, Clone)]
pub struct GreedyRun {
    pub tokens: Vec<u32>,
    pub steps: Vec<Vec<f64>>,
}

impl GreedyRun {
    /// The first step whose token differs from `other`'s.
    pub fn parts_from(&self, other: &GreedyRun) -> Option<usize> {
        self.tokens
            .iter()
            .zip(&other.tokens)
            .position(|(a, b)| a != b)
    }

    /// The largest per-step RMS against `other` over the steps both ran on
    /// the same context (up to and including the step where they part).
    pub fn distance_until_parting(&self, other: &GreedyRun) -> f64 {
        let last = self.parts_from(other).unwrap_or(usize::MAX);
        self.steps
            .iter()
            .zip(&other.steps)
            .take(last.saturating_add(1))
            .map(|(a, b)| diff(a, b).rms)
            .fold(0.0, f64::max)
    }
}

/// Distances from the graph path: fused runs' against the graph runs' own.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DistanceRule {
    /// Per fused run: op / logits level, RMS against graph run i; greedy,
    /// the largest per-step RMS against graph run 0 before they part.
    pub fused: Vec<f64>,
    /// Op / logits level: every pair of graph runs; greedy: each graph run
    /// after the first against run 0, as for the fused runs.
    pub graph: Vec<f64>,
    pub fused_median: f64,
    /// The graph distances' upper tail: their (1 - quantile) quantile.
    pub graph_bound: f64,
    pub within: bool,
}

impl DistanceRule {
    fn judge(fused: Vec<f64>, graph: Vec<f64>, q: f64) -> Self {
        let fused_median = lower_quantile(&fused, 0.5).unwrap_or(f64::INFINITY);
        let graph_bound = lower_quantile(&graph, 1.0 - q).unwrap_or(0.0);
        DistanceRule {
            within: fused_median <= graph_bound,
            fused,
            graph,
            fused_median,
            graph_bound,
        }
    }
}

/// Greedy runs: where fused parts from graph against where graph parts
/// from itself. A run that never parts counts as parting at `steps`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DivergenceRule {
    pub steps: usize,
    /// Each graph run after the first against graph run 0.
    pub graph: Vec<Option<usize>>,
    /// Each fused run against graph run 0.
    pub fused: Vec<Option<usize>>,
    pub fused_median: usize,
    /// The graph divergence steps' early tail: their `quantile` quantile.
    pub graph_bound: usize,
    pub within: bool,
}

impl DivergenceRule {
    fn judge(fused: Vec<Option<usize>>, graph: Vec<Option<usize>>, steps: usize, q: f64) -> Self {
        let censored = |v: &[Option<usize>]| -> Vec<f64> {
            v.iter().map(|d| d.unwrap_or(steps) as f64).collect()
        };
        let fused_median = lower_quantile(&censored(&fused), 0.5).unwrap_or(0.0) as usize;
        let graph_bound = lower_quantile(&censored(&graph), q).unwrap_or(steps as f64) as usize;
        DivergenceRule {
            steps,
            within: fused_median >= graph_bound,
            graph,
            fused,
            fused_median,
            graph_bound,
        }
    }
}

/// The containment verdict of one level, with both envelopes it came from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PathContainment {
    pub graph: Envelope,
    pub fused: Envelope,
    /// `containment_quantile` as used.
    pub quantile: f64,
    pub distance: DistanceRule,
    /// Greedy runs only.
    pub divergence: Option<DivergenceRule>,
    /// Op / logits level with truth given: fused and graph (run 0) RMS
    /// against f64 truth, for the rule of a deterministic graph path.
    pub truth_errors: Option<(f64, f64)>,
    /// `Envelope` when the graph runs spread, `TruthRelative` when they do
    /// not and truth decides; `None` when they do not and nothing can
    /// (greedy runs of a deterministic graph path).
    pub rule: Option<ContainmentRule>,
    /// `None`: not judged (no envelope and no truth).
    pub contained: Option<bool>,
}

impl PathContainment {
    /// Op or logits level: `graph[i]` and `fused[i]` are run i of each path
    /// on the same input (flattened); `truth` the f64 result of that input.
    pub fn of_values(
        graph_env: Envelope,
        fused_env: Envelope,
        graph: &[Vec<f64>],
        fused: &[Vec<f64>],
        truth: Option<&[f64]>,
    ) -> Self {
        let q = tol(Tol::ContainmentQuantile);
        let cross: Vec<f64> = fused
            .iter()
            .zip(graph)
            .map(|(f, g)| diff(f, g).rms)
            .collect();
        let mut pairs = Vec::new();
        for i in 0..graph.len() {
            for j in i + 1..graph.len() {
                pairs.push(diff(&graph[j], &graph[i]).rms);
            }
        }
        let distance = DistanceRule::judge(cross, pairs, q);
        let truth_errors = match (truth, graph.first(), fused.first()) {
            (Some(t), Some(g), Some(f)) => Some((diff(f, t).rms, diff(g, t).rms)),
            _ => None,
        };
        let (rule, contained) = if graph_env.distinct > 1 {
            (Some(ContainmentRule::Envelope), Some(distance.within))
        } else {
            // The graph path gave one result: the zero-envelope rule of
            // `envelope::containment`, which needs truth.
            let c: Option<Containment> = truth_errors.map(|e| {
                crate::verify::envelope::containment(distance.fused_median, &graph_env, Some(e))
            });
            (c.as_ref().map(|c| c.rule), c.map(|c| c.contained))
        };
        PathContainment {
            graph: graph_env,
            fused: fused_env,
            quantile: q,
            distance,
            divergence: None,
            truth_errors,
            rule,
            contained,
        }
    }

    /// Greedy runs of `steps` steps of each path from the same prompt.
    pub fn of_greedy(
        graph_env: Envelope,
        fused_env: Envelope,
        graph: &[GreedyRun],
        fused: &[GreedyRun],
        steps: usize,
    ) -> Self {
        let q = tol(Tol::ContainmentQuantile);
        let (rule, distance, divergence) = match graph.split_first() {
            Some((g0, rest)) => (
                graph_env.distinct > 1,
                DistanceRule::judge(
                    fused.iter().map(|f| f.distance_until_parting(g0)).collect(),
                    rest.iter().map(|g| g.distance_until_parting(g0)).collect(),
                    q,
                ),
                DivergenceRule::judge(
                    fused.iter().map(|f| f.parts_from(g0)).collect(),
                    rest.iter().map(|g| g.parts_from(g0)).collect(),
                    steps,
                    q,
                ),
            ),
            None => (
                false,
                DistanceRule::judge(Vec::new(), Vec::new(), q),
                DivergenceRule::judge(Vec::new(), Vec::new(), steps, q),
            ),
        };
        let contained = rule.then_some(distance.within && divergence.within);
        PathContainment {
            graph: graph_env,
            fused: fused_env,
            quantile: q,
            distance,
            divergence: Some(divergence),
            truth_errors: None,
            rule: rule.then_some(ContainmentRule::Envelope),
            contained,
        }
    }

    /// One paragraph: the verdict and the numbers it came from.
    pub fn verdict(&self) -> String {
        let d = &self.distance;
        let mut s = match (self.rule, self.contained) {
            (Some(ContainmentRule::Envelope), Some(c)) => format!(
                "{}: median fused distance from graph {:.3e} {} the graph runs' {:.0}% tail {:.3e} ({:.1}x)",
                if c { "contained" } else { "NOT contained" },
                d.fused_median,
                if d.within { "<=" } else { ">" },
                100.0 * (1.0 - self.quantile),
                d.graph_bound,
                if d.graph_bound > 0.0 {
                    d.fused_median / d.graph_bound
                } else {
                    f64::INFINITY
                }
            ),
            (Some(ContainmentRule::TruthRelative), Some(c)) => {
                let (f, g) = self.truth_errors.unwrap_or_default();
                format!(
                    "{} (graph deterministic over {} runs, truth-relative): fused error vs truth {f:.3e}, graph {g:.3e} (factor {})",
                    if c { "contained" } else { "NOT contained" },
                    self.graph.runs,
                    tol(Tol::TruthRelativeFactor)
                )
            }
            _ => format!(
                "not judged: the graph path gave one result over {} runs (no envelope to be inside) and no truth applies; median fused distance from graph {:.3e}",
                self.graph.runs, d.fused_median
            ),
        };
        if let Some(v) = &self.divergence {
            s += &format!(
                "; first divergence from graph run 0: fused median step {} {} the graph runs' {:.0}% quantile step {} (of {} steps)",
                v.fused_median,
                if v.within { ">=" } else { "<" },
                100.0 * self.quantile,
                v.graph_bound,
                v.steps
            );
        }
        if let (Some((f, g)), Some(ContainmentRule::Envelope)) = (self.truth_errors, self.rule) {
            s += &format!("; against truth: fused {f:.3e}, graph {g:.3e}");
        }
        s
    }

    pub fn to_text(&self) -> String {
        format!(
            "graph path\n{}fused path\n{}containment: {}\n",
            indent(&self.graph.to_text()),
            indent(&self.fused.to_text()),
            self.verdict()
        )
    }
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("  {l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::case::{Case, Op};
    use crate::verify::envelope::{envelope, UlpType};

    fn env(results: &[Vec<f64>]) -> Envelope {
        envelope(
            Case::new(Op::Qkv, crate::ident::BackendKind::Cpu),
            results,
            None,
            UlpType::F32,
        )
    }

    /// Run i of a path: a base vector with a run-dependent wobble of
    /// `noise` in one element and a fixed offset `bias` in another.
    fn runs(n: usize, noise: f64, bias: f64, shift: usize) -> Vec<Vec<f64>> {
        (0..n)
            .map(|i| {
                vec![
                    1.0 + noise * (((i + shift) * 7) % 5) as f64,
                    2.0 + bias,
                    3.0,
                ]
            })
            .collect()
    }

    #[test]
    fn the_lower_quantile_is_an_element_of_the_sample() {
        let v = [5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(lower_quantile(&v, 0.0), Some(1.0));
        assert_eq!(lower_quantile(&v, 0.5), Some(3.0));
        assert_eq!(lower_quantile(&v, 0.9), Some(4.0));
        assert_eq!(lower_quantile(&v, 1.0), Some(5.0));
        assert_eq!(lower_quantile(&[], 0.5), None);
    }

    #[test]
    fn a_fused_path_that_wobbles_like_graph_is_contained_and_an_offset_one_is_not() {
        let graph = runs(20, 1e-3, 0.0, 0);
        // The same wobble, run i of fused being run i + 1 of graph.
        let like = runs(20, 1e-3, 0.0, 1);
        let c = PathContainment::of_values(env(&graph), env(&like), &graph, &like, None);
        assert_eq!(c.rule, Some(ContainmentRule::Envelope));
        assert_eq!(c.contained, Some(true), "{}", c.verdict());
        // The same wobble plus a fixed offset ten times its size.
        let off = runs(20, 1e-3, 1e-2, 1);
        let c = PathContainment::of_values(env(&graph), env(&off), &graph, &off, None);
        assert_eq!(c.contained, Some(false), "{}", c.verdict());
        assert!(c.verdict().starts_with("NOT contained"));
    }

    #[test]
    fn a_deterministic_graph_path_is_judged_by_truth_or_not_at_all() {
        let graph = runs(5, 0.0, 0.0, 0);
        let fused = runs(5, 0.0, 1e-3, 0);
        let truth = vec![1.0, 2.0005, 3.0];
        let c = PathContainment::of_values(env(&graph), env(&fused), &graph, &fused, Some(&truth));
        assert_eq!(c.rule, Some(ContainmentRule::TruthRelative));
        assert_eq!(c.contained, Some(true), "{}", c.verdict());
        let far = runs(5, 0.0, 1e-2, 0);
        let c = PathContainment::of_values(env(&graph), env(&far), &graph, &far, Some(&truth));
        assert_eq!(c.contained, Some(false), "{}", c.verdict());
        let c = PathContainment::of_values(env(&graph), env(&far), &graph, &far, None);
        assert_eq!((c.rule, c.contained), (None, None));
    }

    fn greedy(tokens: &[u32], logit: f64) -> GreedyRun {
        GreedyRun {
            tokens: tokens.to_vec(),
            steps: tokens.iter().map(|_| vec![logit, 0.0]).collect(),
        }
    }

    #[test]
    fn greedy_runs_part_no_earlier_than_graph_parts_from_itself() {
        // Graph runs part from run 0 at steps 2..=5; their logits wobble.
        let base = [1, 2, 3, 4, 5, 6, 7, 8];
        let part_at = |s: usize, wobble: f64| {
            let mut t = base.to_vec();
            t[s] = 99;
            greedy(&t, 1.0 + wobble)
        };
        let mut graph = vec![greedy(&base, 1.0)];
        graph.extend((0..19).map(|i| part_at(2 + i % 4, 1e-3 * (i % 3) as f64)));
        let fused_like: Vec<GreedyRun> = (0..20)
            .map(|i| part_at(2 + (i + 1) % 4, 1e-3 * (i % 3) as f64))
            .collect();
        let e = env(&[vec![0.0], vec![1.0]]);
        let c = PathContainment::of_greedy(e.clone(), e.clone(), &graph, &fused_like, base.len());
        assert_eq!(c.contained, Some(true), "{}", c.verdict());
        // A fused path that parts at step 0 every time.
        let early: Vec<GreedyRun> = (0..20).map(|_| part_at(0, 0.0)).collect();
        let c = PathContainment::of_greedy(e.clone(), e.clone(), &graph, &early, base.len());
        assert_eq!(c.contained, Some(false), "{}", c.verdict());
        assert!(!c.divergence.as_ref().unwrap().within);
        // One that parts like graph but with logits ten times farther.
        let far: Vec<GreedyRun> = (0..20).map(|i| part_at(2 + i % 4, 2e-2)).collect();
        let c = PathContainment::of_greedy(e.clone(), e, &graph, &far, base.len());
        assert_eq!(c.contained, Some(false), "{}", c.verdict());
        assert!(!c.distance.within && c.divergence.as_ref().unwrap().within);
    }

    #[test]
    fn greedy_runs_of_a_deterministic_graph_path_are_not_judged() {
        let base = [1, 2, 3];
        let graph: Vec<GreedyRun> = (0..5).map(|_| greedy(&base, 1.0)).collect();
        let e = env(&[vec![0.0], vec![0.0]]);
        let c = PathContainment::of_greedy(e.clone(), e, &graph, &graph, 3);
        assert_eq!((c.rule, c.contained), (None, None));
        assert!(c.verdict().starts_with("not judged"));
    }
}
