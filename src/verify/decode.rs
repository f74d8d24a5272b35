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
    pub pass: bool,
}

/// Judges decode-step logits (`decode[i]`, one per step) against the
/// teacher-forced rows at the same positions (`teacher[i]`).
pub fn judge_decode(
    case: Case,
    rule: DecodeRule,
    decode: &[Vec<f64>],
    teacher: &[Vec<f64>],
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
    DecodeReport {
        case,
        rule,
        steps: decode.len(),
        bitwise_steps,
        worst_rel_rms: worst,
        pass: complete && first_failure.is_none(),
        first_failure,
    }
}
