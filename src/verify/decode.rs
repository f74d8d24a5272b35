//! Decode steps against the teacher-forced pass of the same sequence: the
//! check that exercises the single-token kernels a decode step runs (the
//! prefill kernels are judged by the parity rows). Each step's logits are
//! compared with the teacher-forced row at the same position.

use crate::verify::case::Case;
use crate::verify::metrics::diff;
use crate::verify::tolerances::{tol, Tol};
use serde::{Deserialize, Serialize};

/// How a backend's decode steps must relate to its teacher-forced rows.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "rule")]
pub enum DecodeRule {
    /// The same bits: where a backend sums a row in the same order alone or
    /// among others (the CPU reference and MLX's CPU device, measured).
    Bitwise,
    /// Each step's relative RMS below a named tolerance, where the kernels
    /// of one row and of many differ in summation order.
    RelRms { tolerance: Tol },
}

impl std::fmt::Display for DecodeRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeRule::Bitwise => f.write_str("bitwise, every step"),
            DecodeRule::RelRms { tolerance } => {
                write!(
                    f,
                    "rel RMS < {tolerance} = {:e}, every step",
                    tol(*tolerance)
                )
            }
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DecodeReport {
    pub case: Case,
    pub rule: DecodeRule,
    pub steps: usize,
    /// Steps whose logits are bitwise the teacher-forced row's.
    pub bitwise_steps: usize,
    pub worst_rel_rms: f64,
    /// The first step the rule fails at, and its relative RMS.
    pub first_failure: Option<(usize, f64)>,
    /// MoE models: the routing near-tie that explains the first failure
    /// (the decision at that step closest to a tie, in either pass, within
    /// `moe_routing_near_tie_bf16`). A flipped expert moves that step's
    /// logits and, through the KV cache, every later step's: those are not
    /// judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_near_tie: Option<StepTie>,
    pub pass: bool,
}

/// The routing decision closest to a tie at one step, over every MoE layer
/// and both passes: its relative gap (`RowRouting::boundary_gap`) and layer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepTie {
    pub step: usize,
    pub gap: f32,
    pub layer: usize,
}

/// Judges decode-step logits (`decode[i]`, one per step) against the
/// teacher-forced rows at the same positions (`teacher[i]`); `ties[i]` is
/// step i's routing decision nearest a tie (gap, layer), empty for dense
/// models.
pub fn judge_decode(
    case: Case,
    rule: DecodeRule,
    decode: &[Vec<f64>],
    teacher: &[Vec<f64>],
    ties: &[Option<(f32, usize)>],
) -> DecodeReport {
    let mut bitwise_steps = 0;
    let mut worst: f64 = 0.0;
    let mut first_failure = None;
    for (i, (d, t)) in decode.iter().zip(teacher).enumerate() {
        let same = d.len() == t.len() && d.iter().zip(t).all(|(a, b)| a.to_bits() == b.to_bits());
        let r = if d.len() == t.len() {
            diff(d, t).rel_rms
        } else {
            f64::INFINITY
        };
        bitwise_steps += usize::from(same);
        worst = worst.max(r);
        let ok = match rule {
            DecodeRule::Bitwise => same,
            DecodeRule::RelRms { tolerance } => r < tol(tolerance),
        };
        if !ok && first_failure.is_none() {
            first_failure = Some((i, r));
        }
    }
    let complete = decode.len() == teacher.len() && !decode.is_empty();
    let near = tol(Tol::MoeRoutingNearTieBf16);
    let routing_near_tie = first_failure.and_then(|(step, _)| match ties.get(step) {
        Some(&Some((gap, layer))) if f64::from(gap) <= near => Some(StepTie { step, gap, layer }),
        _ => None,
    });
    DecodeReport {
        case,
        rule,
        steps: decode.len(),
        bitwise_steps,
        worst_rel_rms: worst,
        pass: complete && (first_failure.is_none() || routing_near_tie.is_some()),
        first_failure,
        routing_near_tie,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendKind;
    use crate::verify::case::Op;

    fn case() -> Case {
        Case::new(Op::Decode, BackendKind::Cpu)
    }

    const RULE: DecodeRule = DecodeRule::RelRms {
        tolerance: Tol::MlxGpuBf16VsCpuBf16LogitsRelRms,
    };

    #[test]
    fn a_step_past_the_bound_fails_unless_a_routing_near_tie_explains_it() {
        let t = vec![vec![1.0, 2.0, 3.0]; 3];
        let mut d = t.clone();
        d[1] = vec![3.0, 2.0, 1.0];
        let dense = judge_decode(case(), RULE, &d, &t, &[]);
        assert!(!dense.pass);
        assert_eq!(dense.first_failure.map(|f| f.0), Some(1));
        // A confident decision at the failing step explains nothing.
        let far = [None, Some((0.5, 2)), None];
        assert!(!judge_decode(case(), RULE, &d, &t, &far).pass);
        // A near-tie at another step explains nothing either.
        let elsewhere = [Some((1e-4, 0)), Some((0.5, 2)), None];
        assert!(!judge_decode(case(), RULE, &d, &t, &elsewhere).pass);
        let tied = [None, Some((1e-4, 2)), None];
        let r = judge_decode(case(), RULE, &d, &t, &tied);
        assert!(r.pass, "{r:?}");
        assert_eq!(
            r.routing_near_tie,
            Some(StepTie {
                step: 1,
                gap: 1e-4,
                layer: 2
            })
        );
    }
}
