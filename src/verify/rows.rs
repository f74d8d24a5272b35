//! The row rule for teacher-forced logits of two backends (one row = the
//! next-token distribution after one token).
//!
//! Dense models: every row within the named relative-RMS tolerance. MoE
//! models: a router choice at a near-tie can go either way between two correct
//! bf16 implementations, and the other expert moves that token's output by
//! O(1). Attention is causal, so rows before such a flip are untouched: every
//! row up to the first one beyond the tolerance must be within it, and that
//! row must carry a routing near-tie (`moe_routing_near_tie_bf16`) in the
//! candidate's own routing record; later rows are not judged, as a greedy run
//! is not judged after its first divergence.
//!
//! Inputs are plain numbers (per-row relative RMS, per-row nearest routing
//! tie); the caller gathers them, so this never touches a backend.

use crate::verify::tolerances::{tol, Tol};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "verdict")]
pub enum RowVerdict {
    /// Every row within the tolerance.
    AllWithin { worst: f64 },
    /// Rows before `row` within the tolerance (largest `worst_before`);
    /// `row` beyond it at `value`, explained by a routing near-tie of `gap`
    /// (relative router-logit gap) at MoE layer `layer`.
    RoutingNearTie {
        row: usize,
        value: f64,
        worst_before: f64,
        gap: f32,
        layer: usize,
    },
    /// `row` beyond the tolerance with no routing near-tie to explain it
    /// (`nearest_tie`: the smallest gap recorded for that row, if any).
    Outside {
        row: usize,
        value: f64,
        nearest_tie: Option<(f32, usize)>,
    },
}

impl RowVerdict {
    pub fn passes(&self) -> bool {
        !matches!(self, RowVerdict::Outside { .. })
    }

    /// The largest relative RMS among the rows the rule judged.
    pub fn worst_judged(&self) -> f64 {
        match *self {
            RowVerdict::AllWithin { worst } => worst,
            RowVerdict::RoutingNearTie { worst_before, .. } => worst_before,
            RowVerdict::Outside { value, .. } => value,
        }
    }
}

/// Judges `rows` (per-row relative RMS of candidate vs reference) against
/// the tolerance `limit`; `ties[r]` is row `r`'s nearest routing tie in
/// the candidate's record (gap, MoE layer), `None` for dense models or rows
/// without a record. A NaN row is beyond any tolerance.
pub fn judge_rows(rows: &[f64], ties: &[Option<(f32, usize)>], limit: Tol) -> RowVerdict {
    let limit = tol(limit);
    let tie = tol(Tol::MoeRoutingNearTieBf16);
    let Some(r) = rows.iter().position(|&d| d.is_nan() || d > limit) else {
        return RowVerdict::AllWithin {
            worst: rows.iter().cloned().fold(0.0, f64::max),
        };
    };
    let worst_before = rows[..r].iter().cloned().fold(0.0, f64::max);
    match ties.get(r).copied().flatten() {
        Some((gap, layer)) if f64::from(gap) <= tie => RowVerdict::RoutingNearTie {
            row: r,
            value: rows[r],
            worst_before,
            gap,
            layer,
        },
        nearest_tie => RowVerdict::Outside {
            row: r,
            value: rows[r],
            nearest_tie,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Tol = Tol::MlxBf16VsCpuBf16LogitsRelRms;

    #[test]
    fn rows_within_the_tolerance_pass() {
        let v = judge_rows(&[0.01, 0.03, 0.02], &[], LIMIT);
        assert_eq!(v, RowVerdict::AllWithin { worst: 0.03 });
        assert!(v.passes());
    }

    #[test]
    fn a_row_beyond_the_tolerance_without_a_routing_tie_fails() {
        let v = judge_rows(&[0.01, 0.5, 0.02], &[None, Some((0.2, 1)), None], LIMIT);
        assert!(!v.passes(), "{v:?}");
        assert!(matches!(v, RowVerdict::Outside { row: 1, .. }), "{v:?}");
    }

    #[test]
    fn a_row_beyond_the_tolerance_at_a_routing_near_tie_passes_and_later_rows_are_not_judged() {
        let v = judge_rows(&[0.01, 0.3, 0.9], &[None, Some((0.004, 0)), None], LIMIT);
        assert!(v.passes(), "{v:?}");
        assert!(
            matches!(
                v,
                RowVerdict::RoutingNearTie {
                    row: 1,
                    layer: 0,
                    ..
                }
            ),
            "{v:?}"
        );
        assert_eq!(v.worst_judged(), 0.01);
    }

    #[test]
    fn a_nan_row_fails() {
        assert!(!judge_rows(&[0.01, f64::NAN], &[], LIMIT).passes());
    }
}
