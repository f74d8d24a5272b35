//! How each kind of result becomes one row of the `verify` table: the
//! metric shown, the threshold it was judged by and why it passed or failed.
//! Reads verification results only.

use crate::skip::{decide, Need};
use crate::verify::case::Case;
use crate::verify::envelope::{Containment, ContainmentRule, Envelope};
use crate::verify::golden::GoldenOutcome;
use crate::verify::parity::{ParityReport, ParityRule};
use crate::verify::reference::ReferenceReport;
use crate::verify::rows::RowVerdict;
use crate::verify::summary::{Check, CheckResult, Status};
use crate::verify::tolerances::{tol, Tol};

fn status(pass: bool) -> Status {
    if pass {
        Status::Pass
    } else {
        Status::Fail
    }
}

/// A parity report: the worst fused-graph RMS under an absolute rule, the
/// worst fused-truth / graph-truth ratio under the truth-relative one.
pub fn parity_row(rep: &ParityReport, check: Check) -> CheckResult {
    let (metric, value) = match rep.rule {
        ParityRule::Rms { .. } => ("max RMS fused-graph", rep.worst_fused_vs_graph_rms()),
        ParityRule::TruthRelative { .. } => {
            let worst = rep
                .levels
                .iter()
                .flat_map(|l| &l.tensors)
                .filter_map(|t| {
                    Some(t.fused_vs_truth?.rms / t.graph_vs_truth?.rms.max(f64::MIN_POSITIVE))
                })
                .fold(0.0, f64::max);
            ("max fused-truth / graph-truth", worst)
        }
    };
    CheckResult {
        check,
        case: rep.case.clone(),
        metric: metric.into(),
        value: Some(value),
        threshold: rep.rule.to_string(),
        status: status(rep.pass),
        detail: match rep.first_failure() {
            Some((l, t)) if t.far_from_truth => format!(
                "first failure: {l} {}: the graph path itself is {:.3e} (rel RMS) from truth, \
                 >= truth_rel_rms_ceiling; both paths broken, not a tie",
                t.tensor,
                t.graph_vs_truth.map_or(f64::NAN, |g| g.rel_rms)
            ),
            Some((l, t)) => format!("first failure: {l} {}", t.tensor),
            None => passed_because(rep),
        },
    }
}

/// Why a passing parity report passed: where its worst tensor sits, and
/// which path was nearer truth how often.
fn passed_because(rep: &ParityReport) -> String {
    use crate::verify::parity::Nearer;
    let tensors = || {
        rep.levels
            .iter()
            .flat_map(|l| l.tensors.iter().map(move |t| (l, t)))
    };
    let key = |t: &crate::verify::parity::TensorParity| match rep.rule {
        ParityRule::Rms { .. } => t.fused_vs_graph.rms,
        ParityRule::TruthRelative { .. } => match (t.fused_vs_truth, t.graph_vs_truth) {
            (Some(f), Some(g)) => f.rms / g.rms.max(f64::MIN_POSITIVE),
            _ => f64::NAN,
        },
    };
    let worst = tensors().max_by(|a, b| key(a.1).total_cmp(&key(b.1)));
    let count = |n: Nearer| tensors().filter(|(_, t)| t.nearer_truth == Some(n)).count();
    let total = tensors().count();
    let mut s = match worst {
        Some((l, t)) => format!(
            "every one of {total} tensors within; worst {} {} ({:.3e})",
            l.level,
            t.tensor,
            key(t)
        ),
        None => "no tensors compared".into(),
    };
    if tensors().any(|(_, t)| t.nearer_truth.is_some()) {
        s += &format!(
            "; nearer truth: fused {}, graph {}, tie {}",
            count(Nearer::Fused),
            count(Nearer::Graph),
            count(Nearer::Tie)
        );
    }
    s
}

/// A transformers reference comparison.
pub fn oracle_row(case: Case, rep: &ReferenceReport) -> CheckResult {
    CheckResult {
        check: Check::Oracle,
        case,
        metric: "max rel RMS logits".into(),
        value: Some(rep.worst_rel_rms),
        threshold: format!(
            "{} = {:e}",
            rep.rel_rms_tolerance.0, rep.rel_rms_tolerance.1
        ),
        status: status(rep.pass),
        detail: match (&rep.first_divergence, rep.divergence_margin) {
            (Some(d), Some(m)) => format!("greedy differs at step {} (margin {m:.4})", d.step),
            _ => format!("greedy agrees for {} steps", rep.steps.len()),
        },
    }
}

/// An envelope of a deterministic backend: one bitwise result however
/// often it runs.
pub fn envelope_row(env: &Envelope) -> CheckResult {
    CheckResult {
        check: Check::Envelope,
        case: env.case.clone(),
        metric: format!("bitwise-distinct of {}", env.runs),
        value: Some(env.distinct as f64),
        threshold: "1 (deterministic backend)".into(),
        status: status(env.distinct == 1),
        detail: format!("max pairwise RMS {:.3e}", env.pairwise_rms.max),
    }
}

/// Fused-vs-graph distance against the graph path's envelope.
pub fn containment_row(case: Case, c: &Containment) -> CheckResult {
    CheckResult {
        check: Check::Containment,
        case,
        metric: "RMS fused-graph".into(),
        value: Some(c.distance),
        threshold: match c.truth_errors {
            Some((f, g)) if c.rule == ContainmentRule::TruthRelative => format!(
                "zero envelope: fused-truth {f:.3e} <= truth_relative_factor x graph-truth {g:.3e}"
            ),
            _ => format!("graph envelope max RMS {:.3e}", c.envelope_max_rms),
        },
        status: status(c.contained),
        detail: c.rule.name().into(),
    }
}

/// Fused against the graph path's envelope from N runs of each: failed
/// when not contained, skipped (saying why) when nothing could judge.
pub fn path_containment_row(
    case: Case,
    c: &crate::verify::containment::PathContainment,
) -> CheckResult {
    CheckResult {
        check: Check::Containment,
        case,
        metric: "median RMS fused-graph".into(),
        value: Some(c.distance.fused_median),
        threshold: match c.rule {
            Some(ContainmentRule::TruthRelative) => {
                "zero envelope: fused-truth <= truth_relative_factor x graph-truth".into()
            }
            _ => format!(
                "graph runs' {:.0}% tail {:.3e} (containment_quantile)",
                100.0 * (1.0 - c.quantile),
                c.distance.graph_bound
            ),
        },
        status: match c.contained {
            Some(ok) => status(ok),
            None => Status::Skipped(c.verdict()),
        },
        detail: c.verdict(),
    }
}

/// The fused path's bits under layout changes alone.
pub fn layout_row(r: &crate::verify::layout::LayoutReport) -> CheckResult {
    CheckResult {
        check: Check::Layout,
        case: r.case.clone(),
        metric: "layouts that changed bits".into(),
        value: Some(
            r.perturbations
                .iter()
                .filter(|p| p.first_difference.is_some())
                .count() as f64,
        ),
        threshold: "0 (bitwise)".into(),
        status: status(r.pass),
        detail: r.summary(),
    }
}

/// Batch invariance: every sequence's decode steps in the batch bitwise
/// those it has alone.
pub fn batch_row(case: Case, r: &crate::jobs::batch::BatchInvariance) -> CheckResult {
    let differing = r
        .sequences
        .iter()
        .filter(|s| s.first_difference.is_some())
        .count();
    CheckResult {
        check: Check::Batch,
        case,
        metric: "sequences whose bits changed in the batch".into(),
        value: Some(differing as f64),
        threshold: "0 (bitwise)".into(),
        status: status(r.bitwise),
        detail: format!(
            "{} sequences, largest batch {}; {}",
            r.sequences.len(),
            r.sequences
                .iter()
                .flat_map(|s| s.batch_sizes.iter().copied())
                .max()
                .unwrap_or(0),
            r.sequences
                .iter()
                .filter_map(|s| s.first_difference.map(|t| format!(
                    "seq {} differs from step {t} (max |diff| {:.3e})",
                    s.index, s.max_abs
                )))
                .next()
                .unwrap_or_else(|| "every sequence identical".into())
        ),
    }
}

/// A fresh golden run against its committed snapshot (`committed`: the
/// outcome of the comparison, or why there was none).
pub fn golden_row(case: Case, committed: &crate::error::Result<GoldenOutcome>) -> CheckResult {
    CheckResult {
        check: Check::Golden,
        case,
        metric: "first token change".into(),
        value: match committed {
            Ok(GoldenOutcome::NearTie { step, .. } | GoldenOutcome::Regression { step, .. }) => {
                Some(*step as f64)
            }
            _ => None,
        },
        threshold: "none, or at a recorded near-tie".into(),
        status: status(matches!(committed, Ok(o) if o.passes())),
        detail: match committed {
            Ok(o) => o.describe(),
            Err(e) => e.to_string(),
        },
    }
}

/// A backend's teacher-forced logits against the CPU reference, judged row
/// by row (`tolerance`; MoE: up to a routing near-tie).
pub fn logits_row(case: Case, tolerance: Tol, verdict: &RowVerdict, rows: usize) -> CheckResult {
    CheckResult {
        check: Check::ParityLogits,
        case,
        metric: "max row rel RMS judged".into(),
        value: Some(verdict.worst_judged()),
        threshold: format!(
            "{tolerance} = {:e} per row; MoE: up to a routing near-tie",
            tol(tolerance)
        ),
        status: status(verdict.passes()),
        detail: match verdict {
            RowVerdict::AllWithin { .. } => format!("all {rows} rows within"),
            RowVerdict::RoutingNearTie {
                row,
                value,
                gap,
                layer,
                ..
            } => format!(
                "rows 0..{row} within; row {row} ({value:.3e}) follows a routing near-tie \
                 (gap {gap:.2e}, MoE layer {layer}); later rows not judged"
            ),
            RowVerdict::Outside {
                row,
                value,
                nearest_tie,
            } => format!(
                "row {row} at {value:.3e}, no routing near-tie explains it (nearest {nearest_tie:?})"
            ),
        },
    }
}

/// The row of a backend that could not run here (`reason`): a skip, or a
/// failure when `required` (the value of its LOCKSTEP_REQUIRE_* variable) is
/// "1", as for tests.
pub fn skipped_backend_row(
    need: Need,
    required: Option<&str>,
    case: Case,
    reason: &str,
) -> CheckResult {
    let test = case.id();
    let skipped = CheckResult::skipped(Check::ParityOp, case, reason);
    match decide(need, required, &test, reason) {
        Ok(_) => skipped,
        Err(msg) => CheckResult {
            status: Status::Fail,
            detail: msg,
            ..skipped
        },
    }
}

/// Decode steps against the teacher-forced pass (`verify::decode`).
pub fn decode_row(r: &crate::verify::decode::DecodeReport) -> CheckResult {
    CheckResult {
        check: Check::Decode,
        case: r.case.clone(),
        metric: "max step rel RMS vs teacher-forced".into(),
        value: Some(r.worst_rel_rms),
        threshold: r.rule.to_string(),
        status: status(r.pass),
        detail: match (r.first_failure, r.routing_near_tie) {
            (Some((step, v)), Some(t)) => format!(
                "MoE routing near-tie at step {step} (layer {}, gap {:.2e}): {v:.3e} there, later steps not judged ({} of {} steps bitwise)",
                t.layer, t.gap, r.bitwise_steps, r.steps
            ),
            (Some((step, v)), None) => format!(
                "step {step} of {} at {v:.3e} ({} of {} steps bitwise)",
                r.steps, r.bitwise_steps, r.steps
            ),
            (None, _) => format!("{} of {} steps bitwise", r.bitwise_steps, r.steps),
        },
    }
}

/// Simulated tensor parallelism against one device: in f64 within
/// `tp_sim_f64_vs_one_device_logits_rel_rms` (only reassociation), in bf16
/// no farther from f64 truth than `truth_relative_factor` times one
/// device's error (roundings drift a noise floor apart and flip routing).
pub fn tp_row(case: Case, r: &crate::jobs::tp::TpRow) -> CheckResult {
    let (metric, value, bound, name) = match r.truth_ratio {
        Some(ratio) => (
            "error vs f64 truth over one device's",
            ratio,
            tol(Tol::TruthRelativeFactor),
            Tol::TruthRelativeFactor.name(),
        ),
        None => (
            "worst-row rel RMS vs one device",
            r.worst_rel_rms,
            tol(Tol::TpSimF64VsOneDeviceLogitsRelRms),
            Tol::TpSimF64VsOneDeviceLogitsRelRms.name(),
        ),
    };
    CheckResult {
        check: Check::TensorParallel,
        case,
        metric: metric.into(),
        value: Some(value),
        threshold: format!("<= {bound:e} ({name})"),
        status: status(value.is_finite() && value <= bound),
        detail: format!(
            "{} ranks, {} all-reduce: worst-row rel RMS {:.3e} vs one device, max |diff| {:.3e}, argmax changed in {} rows{}",
            r.ranks,
            r.order.name(),
            r.worst_rel_rms,
            r.max_abs,
            r.argmax_changed,
            if r.bitwise { ", bitwise" } else { "" }
        ),
    }
}
