//! Op-by-op comparisons of dumps (engine/dump.rs): where two traces part
//! (`lockstep bisect`), and whether another engine's error against f64 truth
//! is ordinary bf16 error or a bug (`lockstep compare --theirs`).
//!
//! Ops are compared in pass order (embed, then each layer's ops in the
//! order the layer computes them, then the final norm and logits), so "the
//! first op beyond tolerance" is the earliest point of departure.

use crate::engine::dump::Dump;
use crate::engine::trace::TraceOp;
use crate::error::{Error, Result};
use crate::verify::metrics::{diff, Diff};
use crate::verify::tolerances::{tol, Tol};
use serde::Serialize;

/// Which side of a comparison is nearer f64 truth at one op.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Nearer {
    A,
    B,
    Tie,
}

/// Routing ops: how many rows chose a different expert set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RoutingDiff {
    pub rows: usize,
    pub rows_differing: usize,
    /// Of those, rows whose router choice was a near-tie
    /// (`moe_routing_near_tie_bf16`), when router logits were at hand.
    #[serde(default)]
    pub near_ties: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct OpRow {
    pub layer: Option<usize>,
    pub op: TraceOp,
    /// Activations: A against B (B the reference side).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub a_vs_b: Option<Diff>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routing: Option<RoutingDiff>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub a_vs_truth: Option<Diff>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub b_vs_truth: Option<Diff>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nearer: Option<Nearer>,
    pub outside: bool,
}

impl OpRow {
    pub fn label(&self) -> String {
        self.op.tensor_name(self.layer)
    }
}

/// Where two dumps part.
#[derive(Debug, Clone, Serialize)]
pub struct Bisection {
    pub a: String,
    pub b: String,
    pub truth: Option<String>,
    pub positions: Vec<usize>,
    pub tolerance: Tol,
    pub limit: f64,
    pub rows: Vec<OpRow>,
    /// The first op (pass order) beyond tolerance.
    pub first_outside: Option<String>,
    /// Ops one side has and the other lacks (e.g. q_proj of a fused trace).
    pub only_in_one: Vec<String>,
}

/// Pass order: embed, per layer in compute order, final norm, logits.
fn pass_order(layer: Option<usize>, op: TraceOp) -> (usize, usize, usize) {
    let rank = TraceOp::ALL.iter().position(|&o| o == op).unwrap_or(0);
    match (layer, op) {
        (None, TraceOp::Embed) => (0, 0, rank),
        (None, _) => (2, 0, rank),
        (Some(l), _) => (1, l, rank),
    }
}

/// (layer, op) of both dumps, in pass order, with the ones only one has.
fn common_ops(a: &Dump, b: &Dump) -> (Vec<(Option<usize>, TraceOp)>, Vec<String>) {
    let mut both: Vec<_> = a
        .entries
        .iter()
        .filter(|e| b.has(e.0, e.1))
        .copied()
        .collect();
    both.sort_by_key(|&(l, o)| pass_order(l, o));
    let only = a
        .entries
        .iter()
        .filter(|e| !b.has(e.0, e.1))
        .chain(b.entries.iter().filter(|e| !a.has(e.0, e.1)))
        .map(|&(l, o)| o.tensor_name(l))
        .collect();
    (both, only)
}

/// Refuses dumps of other tokens or rows: their tensors do not line up.
pub fn check_aligned(a: &Dump, b: &Dump) -> Result<()> {
    let (ma, mb) = (&a.manifest, &b.manifest);
    let what = if ma.tokens != mb.tokens {
        "tokens"
    } else if ma.positions != mb.positions {
        "positions"
    } else {
        return Ok(());
    };
    Err(Error::invalid(
        "dumps",
        format!(
            "{} and {} hold different {what}: a comparison needs the same input and rows",
            a.dir.display(),
            b.dir.display()
        ),
    ))
}

fn routing_diff(a: &[f64], b: &[f64], rows: usize) -> RoutingDiff {
    let w = a.len() / rows.max(1);
    let differing = (0..rows)
        .filter(|&r| a[r * w..(r + 1) * w] != b[r * w..(r + 1) * w])
        .count();
    RoutingDiff {
        rows,
        rows_differing: differing,
        near_ties: 0,
    }
}

/// Rows whose top-k boundary gap, in any of `logits` (router logits of
/// `rows` rows), is at most `moe_routing_near_tie_bf16`.
fn near_tie_rows(logits: &[Vec<f64>], rows: usize, top_k: usize) -> Vec<bool> {
    let limit = tol(Tol::MoeRoutingNearTieBf16);
    let mut tie = vec![false; rows];
    for l in logits {
        let experts = l.len() / rows.max(1);
        if experts == 0 || top_k == 0 || top_k > experts {
            continue;
        }
        let f: Vec<f32> = l.iter().map(|&v| v as f32).collect();
        for (r, rec) in crate::backend::routing_record(&f, experts, top_k)
            .iter()
            .enumerate()
        {
            tie[r] |= f64::from(rec.boundary_gap) <= limit;
        }
    }
    tie
}

/// `routing_diff`, counting the differing rows that are near-ties.
fn routing_diff_with_ties(a: &[f64], b: &[f64], rows: usize, tie: &[bool]) -> RoutingDiff {
    let w = a.len() / rows.max(1);
    let mut d = routing_diff(a, b, rows);
    d.near_ties = (0..rows)
        .filter(|&r| a[r * w..(r + 1) * w] != b[r * w..(r + 1) * w] && tie[r])
        .count();
    d
}

fn nearer(da: &Diff, db: &Diff) -> Nearer {
    if da.rms < db.rms {
        Nearer::A
    } else if db.rms < da.rms {
        Nearer::B
    } else {
        Nearer::Tie
    }
}

/// Compares `a` against `b` op by op: an activation is outside when its
/// relative RMS reaches `bisect_layer_rel_rms` (or it is not finite); a
/// routing op when any row chose differently. With `truth`, each op says
/// which side is nearer it.
pub fn bisect(a: &Dump, b: &Dump, truth: Option<&Dump>) -> Result<Bisection> {
    check_aligned(a, b)?;
    if let Some(t) = truth {
        check_aligned(a, t)?;
    }
    let limit = tol(Tol::BisectLayerRelRms);
    let (ops, only_in_one) = common_ops(a, b);
    let rows_n = a.manifest.positions.len();
    let mut rows = Vec::with_capacity(ops.len());
    let mut first = None;
    for (layer, op) in ops {
        let (va, vb) = (
            a.get(layer, op).expect("listed"),
            b.get(layer, op).expect("listed"),
        );
        let vt = truth.and_then(|t| t.get(layer, op));
        let row = if op.is_routing() {
            let r = routing_diff(&va, &vb, rows_n);
            OpRow {
                layer,
                op,
                a_vs_b: None,
                routing: Some(r),
                a_vs_truth: None,
                b_vs_truth: None,
                nearer: None,
                outside: r.rows_differing > 0,
            }
        } else {
            let d = diff(&va, &vb);
            let (dt_a, dt_b) = match &vt {
                Some(t) => (Some(diff(&va, t)), Some(diff(&vb, t))),
                None => (None, None),
            };
            OpRow {
                layer,
                op,
                a_vs_b: Some(d),
                routing: None,
                nearer: dt_a.as_ref().zip(dt_b.as_ref()).map(|(x, y)| nearer(x, y)),
                a_vs_truth: dt_a,
                b_vs_truth: dt_b,
                outside: !d.finite_ok() || d.rel_rms >= limit,
            }
        };
        if row.outside && first.is_none() {
            first = Some(row.label());
        }
        rows.push(row);
    }
    Ok(Bisection {
        a: a.manifest.engine.clone(),
        b: b.manifest.engine.clone(),
        truth: truth.map(|t| t.manifest.engine.clone()),
        positions: a.manifest.positions.clone(),
        tolerance: Tol::BisectLayerRelRms,
        limit,
        rows,
        first_outside: first,
        only_in_one,
    })
}

/// One op of another engine's dump judged against truth, beside lockstep's
/// bf16-faithful reference on the same input.
#[derive(Debug, Clone, Serialize)]
pub struct TheirsRow {
    pub layer: Option<usize>,
    pub op: TraceOp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub theirs_vs_truth: Option<Diff>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference_vs_truth: Option<Diff>,
    /// Routing ops: theirs against truth's choice, and the reference's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub theirs_routing: Option<RoutingDiff>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference_routing: Option<RoutingDiff>,
    /// False for expert weights: reported, not judged. A few bf16-quantised
    /// values per row make their RMS ratio noise (lockstep's own fused path
    /// measured 2.05x its graph path on tiny-moe's 12 weights); they derive
    /// from the router logits, which are judged, and feed the MoE output,
    /// which is judged too.
    pub judged: bool,
    pub pass: bool,
}

impl TheirsRow {
    pub fn label(&self) -> String {
        self.op.tensor_name(self.layer)
    }

    /// Their RMS error over the reference's (None for routing ops or a
    /// reference that is exact).
    pub fn ratio(&self) -> Option<f64> {
        let (t, r) = (self.theirs_vs_truth?, self.reference_vs_truth?);
        (r.rms > 0.0).then(|| t.rms / r.rms)
    }
}

/// Another engine's dump judged op by op.
#[derive(Debug, Clone, Serialize)]
pub struct TheirsReport {
    pub theirs: String,
    pub positions: Vec<usize>,
    pub factor: f64,
    pub ceiling: f64,
    pub rows: Vec<TheirsRow>,
    /// The first op (pass order) where their error is not ordinary.
    pub first_failing: Option<String>,
    /// The logits' verdict alone (when the dump has logits).
    pub logits_pass: Option<bool>,
    pub pass: bool,
    /// Ops of their dump that lockstep's reference does not produce.
    pub unjudged: Vec<String>,
}

/// Their error is ordinary bf16 error at an op when its RMS against truth is
/// at most `truth_relative_factor` times lockstep's bf16-faithful
/// reference's on the same input, and its relative RMS stays below
/// `truth_rel_rms_ceiling`. Routing passes when every row whose experts
/// part from truth's choice is a near-tie there (`moe_routing_near_tie_bf16`,
/// by truth's router logits and theirs when their dump has them).
pub fn judge_theirs(theirs: &Dump, reference: &Dump, truth: &Dump) -> Result<TheirsReport> {
    check_aligned(theirs, reference)?;
    check_aligned(theirs, truth)?;
    let (factor, ceiling) = (tol(Tol::TruthRelativeFactor), tol(Tol::TruthRelRmsCeiling));
    let (ops, _) = common_ops(theirs, truth);
    let rows_n = theirs.manifest.positions.len();
    let mut rows = Vec::new();
    let mut unjudged = Vec::new();
    for (layer, op) in ops {
        let Some(r) = reference.get(layer, op) else {
            unjudged.push(op.tensor_name(layer));
            continue;
        };
        let (x, t) = (
            theirs.get(layer, op).expect("listed"),
            truth.get(layer, op).expect("listed"),
        );
        let row = if op.is_routing() {
            let top_k = x.len() / rows_n.max(1);
            let logits: Vec<Vec<f64>> = [
                truth.get(layer, TraceOp::RouterLogits),
                theirs.get(layer, TraceOp::RouterLogits),
            ]
            .into_iter()
            .flatten()
            .collect();
            let tie = near_tie_rows(&logits, rows_n, top_k);
            let (tr, rr) = (
                routing_diff_with_ties(&x, &t, rows_n, &tie),
                routing_diff_with_ties(&r, &t, rows_n, &tie),
            );
            TheirsRow {
                layer,
                op,
                theirs_vs_truth: None,
                reference_vs_truth: None,
                pass: tr.rows_differing == tr.near_ties,
                judged: true,
                theirs_routing: Some(tr),
                reference_routing: Some(rr),
            }
        } else {
            let (dx, dr) = (diff(&x, &t), diff(&r, &t));
            let judged = op != TraceOp::ExpertWeights;
            TheirsRow {
                layer,
                op,
                judged,
                pass: !judged
                    || (dx.finite_ok() && dx.rms <= factor * dr.rms && dx.rel_rms < ceiling),
                theirs_vs_truth: Some(dx),
                reference_vs_truth: Some(dr),
                theirs_routing: None,
                reference_routing: None,
            }
        };
        rows.push(row);
    }
    let first_failing = rows.iter().find(|r| !r.pass).map(|r| r.label());
    let logits_pass = rows
        .iter()
        .find(|r| r.op == TraceOp::Logits)
        .map(|r| r.pass);
    Ok(TheirsReport {
        theirs: theirs.manifest.engine.clone(),
        positions: theirs.manifest.positions.clone(),
        factor,
        ceiling,
        pass: first_failing.is_none(),
        first_failing,
        logits_pass,
        rows,
        unjudged,
    })
}

fn fmt_diff(d: &Option<Diff>, rel: bool) -> String {
    d.map_or("-".into(), |d| {
        format!("{:.3e}", if rel { d.rel_rms } else { d.rms })
    })
}

impl Bisection {
    /// A markdown table, one line per op, then the verdict.
    pub fn to_markdown(&self) -> String {
        let mut s = format!(
            "# bisect: {} (A) vs {} (B){}\n\npositions {:?}; an activation is outside at rel RMS >= {} = {}; a routing op when any row chose other experts\n\n",
            self.a,
            self.b,
            self.truth.as_ref().map_or(String::new(), |t| format!(", truth {t}")),
            self.positions,
            self.tolerance.name(),
            self.limit
        );
        s += "| tensor | rel RMS A-B | RMS A-B | max abs A-B | A-truth RMS | B-truth RMS | nearer truth | |\n|---|---|---|---|---|---|---|---|\n";
        for r in &self.rows {
            let (rel, rms, max) = match (&r.a_vs_b, &r.routing) {
                (Some(d), _) => (
                    format!("{:.3e}", d.rel_rms),
                    format!("{:.3e}", d.rms),
                    format!("{:.3e}", d.max_abs),
                ),
                (None, Some(x)) => (
                    format!("{} of {} rows differ", x.rows_differing, x.rows),
                    "-".into(),
                    "-".into(),
                ),
                _ => ("-".into(), "-".into(), "-".into()),
            };
            s += &format!(
                "| {} | {rel} | {rms} | {max} | {} | {} | {} | {} |\n",
                r.label(),
                fmt_diff(&r.a_vs_truth, false),
                fmt_diff(&r.b_vs_truth, false),
                r.nearer.map_or("-", |n| match n {
                    Nearer::A => "A",
                    Nearer::B => "B",
                    Nearer::Tie => "tie",
                }),
                if r.outside { "OUTSIDE" } else { "" }
            );
        }
        s += &match &self.first_outside {
            Some(f) => {
                let row = self.rows.iter().find(|r| &r.label() == f);
                let near = row.and_then(|r| r.nearer).map_or(String::new(), |n| {
                    format!(
                        "; nearer truth there: {}",
                        match n {
                            Nearer::A => "A",
                            Nearer::B => "B",
                            Nearer::Tie => "neither",
                        }
                    )
                });
                format!("\nfirst op beyond tolerance: **{f}**{near}\n")
            }
            None => "\nno op beyond tolerance\n".into(),
        };
        if !self.only_in_one.is_empty() {
            s += &format!(
                "\nin one dump only (not compared): {}\n",
                self.only_in_one.join(", ")
            );
        }
        s
    }
}

impl TheirsReport {
    pub fn to_markdown(&self) -> String {
        let mut s = format!(
            "# compare: {} against lockstep's f64 truth\n\npositions {:?}; an op passes when their RMS error against truth is at most {} = {} times lockstep's bf16-faithful reference's on the same input (and rel RMS < {} = {})\n\n",
            self.theirs,
            self.positions,
            Tol::TruthRelativeFactor.name(),
            self.factor,
            Tol::TruthRelRmsCeiling.name(),
            self.ceiling
        );
        s += "| tensor | theirs-truth RMS | reference-truth RMS | ratio | theirs rel RMS | |\n|---|---|---|---|---|---|\n";
        for r in &self.rows {
            let (t, rf, ratio, rel) = match (&r.theirs_routing, &r.reference_routing) {
                (Some(x), Some(y)) => (
                    format!(
                        "{} of {} rows off truth's experts",
                        x.rows_differing, x.rows
                    ),
                    format!("{} of {}", y.rows_differing, y.rows),
                    "-".into(),
                    "-".into(),
                ),
                _ => (
                    fmt_diff(&r.theirs_vs_truth, false),
                    fmt_diff(&r.reference_vs_truth, false),
                    r.ratio().map_or("-".into(), |x| format!("{x:.2}")),
                    fmt_diff(&r.theirs_vs_truth, true),
                ),
            };
            s += &format!(
                "| {} | {t} | {rf} | {ratio} | {rel} | {} |\n",
                r.label(),
                match (r.judged, r.pass) {
                    (false, _) => "reported",
                    (true, true) => "ok",
                    (true, false) => "FAIL",
                }
            );
        }
        s += &match &self.first_failing {
            Some(f) => format!("\nfirst op whose error is not ordinary bf16 error: **{f}**\n"),
            None => "\nevery op's error is within the reference's (ordinary bf16 error)\n".into(),
        };
        s += &match self.logits_pass {
            Some(true) => "logits: pass\n".to_string(),
            Some(false) => "logits: FAIL\n".to_string(),
            None => "logits: not in the dump\n".to_string(),
        };
        if !self.unjudged.is_empty() {
            s += &format!(
                "not judged (lockstep's reference has no such op on this path): {}\n",
                self.unjudged.join(", ")
            );
        }
        s
    }
}
