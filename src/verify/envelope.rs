//! Run-to-run envelopes: repeat one input N times and measure how far the
//! results spread (bitwise-distinct count, pairwise RMS / max-abs, ULP
//! histogram, per-element spread, first-divergence steps of greedy runs), and
//! judge a candidate path against a reference path's envelope.

use crate::verify::case::Case;
use crate::verify::metrics::diff;
use crate::verify::tolerances::{tol, Tol};
use serde::{Deserialize, Serialize};

/// The storage type whose ULPs measure a difference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UlpType {
    Bf16,
    F32,
}

/// Maps a float's bits onto a line where adjacent floats are adjacent integers.
fn ordinal_f32(x: f32) -> i64 {
    let b = x.to_bits() as i32;
    (if b < 0 { i32::MIN - b } else { b }) as i64
}

/// Distance in units in the last place; `None` if either side is NaN.
pub fn ulp_distance(a: f64, b: f64, t: UlpType) -> Option<u64> {
    if a.is_nan() || b.is_nan() {
        return None;
    }
    let (a, b) = (a as f32, b as f32);
    let d = (ordinal_f32(a) - ordinal_f32(b)).unsigned_abs();
    Some(match t {
        UlpType::F32 => d,
        // bf16 values are f32 values with the low 16 bits zero.
        UlpType::Bf16 => d >> 16,
    })
}

/// Counts of ULP distances in buckets 0, 1, 2, 3-4, 5-8, 9-16, 17-256, >256, NaN.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UlpHistogram {
    pub ulp_type: Option<UlpType>,
    pub buckets: [u64; 9],
}

pub const ULP_BUCKETS: [&str; 9] = ["0", "1", "2", "3-4", "5-8", "9-16", "17-256", ">256", "NaN"];

impl UlpHistogram {
    pub fn new(t: UlpType) -> Self {
        UlpHistogram {
            ulp_type: Some(t),
            buckets: [0; 9],
        }
    }

    pub fn add(&mut self, a: &[f64], b: &[f64]) {
        let t = self.ulp_type.unwrap_or(UlpType::F32);
        for (&x, &y) in a.iter().zip(b) {
            let i = match ulp_distance(x, y, t) {
                None => 8,
                Some(0) => 0,
                Some(1) => 1,
                Some(2) => 2,
                Some(3..=4) => 3,
                Some(5..=8) => 4,
                Some(9..=16) => 5,
                Some(17..=256) => 6,
                Some(_) => 7,
            };
            self.buckets[i] += 1;
        }
    }

    pub fn total(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

/// min / median / max of a sample.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(mut v: Vec<f64>) -> Self {
        if v.is_empty() {
            return Spread::default();
        }
        v.sort_by(f64::total_cmp);
        Spread {
            min: v[0],
            median: v[v.len() / 2],
            max: v[v.len() - 1],
        }
    }
}

/// A 64-bit digest of the exact bits of a result.
pub fn bitwise_hash(values: &[f64]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for v in values {
        h.update(&v.to_bits().to_le_bytes());
    }
    h.digest()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    pub case: Case,
    pub runs: usize,
    /// Number of bitwise-distinct results among the runs.
    pub distinct: usize,
    /// RMS and max-abs of every pair of runs (i < j).
    pub pairwise_rms: Spread,
    pub pairwise_max_abs: Spread,
    /// ULP distances of every run against run 0, element by element.
    pub ulp: UlpHistogram,
    /// Per element, max minus min over the runs.
    pub element_spread: Spread,
    /// Greedy runs only: for each run after the first, the first step whose
    /// token differs from run 0 (`None`: identical throughout).
    pub first_divergence: Option<Vec<Option<usize>>>,
    /// The fingerprint of the runs (all runs share it).
    #[serde(default)]
    pub fingerprint: Option<crate::engine::record::Fingerprint>,
}

/// Measures the envelope of `results` (one flattened result per run; all the
/// same length) and, for greedy runs, their token sequences.
pub fn envelope(
    case: Case,
    results: &[Vec<f64>],
    tokens: Option<&[Vec<u32>]>,
    ulp: UlpType,
) -> Envelope {
    let n = results.len();
    let mut hashes: Vec<u64> = results.iter().map(|r| bitwise_hash(r)).collect();
    hashes.sort_unstable();
    hashes.dedup();
    let (mut rms, mut maxabs) = (Vec::new(), Vec::new());
    for i in 0..n {
        for j in i + 1..n {
            let d = diff(&results[j], &results[i]);
            rms.push(d.rms);
            maxabs.push(d.max_abs);
        }
    }
    let mut hist = UlpHistogram::new(ulp);
    for r in results.iter().skip(1) {
        hist.add(r, &results[0]);
    }
    let width = results.first().map_or(0, Vec::len);
    let spread: Vec<f64> = (0..width)
        .map(|k| {
            let (lo, hi) = results
                .iter()
                .map(|r| r[k])
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                    (lo.min(v), hi.max(v))
                });
            hi - lo
        })
        .collect();
    let first_divergence = tokens.map(|t| {
        t.iter()
            .skip(1)
            .map(|run| run.iter().zip(&t[0]).position(|(a, b)| a != b))
            .collect()
    });
    Envelope {
        case,
        runs: n,
        distinct: hashes.len(),
        pairwise_rms: Spread::of(rms),
        pairwise_max_abs: Spread::of(maxabs),
        ulp: hist,
        element_spread: Spread::of(spread),
        first_divergence,
        fingerprint: None,
    }
}

/// Which rule decided a containment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ContainmentRule {
    /// The reference envelope is non-zero: the distance must lie inside it.
    Envelope,
    /// The reference is deterministic (zero envelope): the candidate's error
    /// against truth is judged relative to the reference's.
    TruthRelative,
}

impl ContainmentRule {
    pub fn name(self) -> &'static str {
        match self {
            ContainmentRule::Envelope => "envelope",
            ContainmentRule::TruthRelative => "truth-relative",
        }
    }
}

/// Whether a candidate's distance from the reference path lies inside the
/// reference path's own run-to-run envelope.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Containment {
    /// RMS(candidate run 0, reference run 0).
    pub distance: f64,
    /// The reference envelope's largest pairwise RMS.
    pub envelope_max_rms: f64,
    pub rule: ContainmentRule,
    /// For the truth-relative rule: candidate and reference RMS against truth.
    pub truth_errors: Option<(f64, f64)>,
    pub contained: bool,
}

/// Containment statistic (docs/tolerances.md): with a non-zero envelope the
/// candidate is contained when its distance from the reference is at most
/// the reference's largest pairwise RMS; with a zero envelope (deterministic
/// reference) the truth-relative rule decides, as in PyTorch's `same`.
pub fn containment(
    distance: f64,
    reference: &Envelope,
    truth_errors: Option<(f64, f64)>,
) -> Containment {
    let env = reference.pairwise_rms.max;
    if env > 0.0 {
        return Containment {
            distance,
            envelope_max_rms: env,
            rule: ContainmentRule::Envelope,
            truth_errors,
            contained: distance <= env,
        };
    }
    let factor = tol(Tol::TruthRelativeFactor);
    Containment {
        distance,
        envelope_max_rms: 0.0,
        rule: ContainmentRule::TruthRelative,
        truth_errors,
        contained: truth_errors.is_some_and(|(cand, refr)| cand <= factor * refr),
    }
}

impl Envelope {
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "{}: {} runs, {} bitwise-distinct\n  pairwise RMS   min {:.3e} median {:.3e} max {:.3e}\n  pairwise |max| min {:.3e} median {:.3e} max {:.3e}\n  element spread median {:.3e} max {:.3e}\n  ULPs vs run 0 ({:?}):",
            self.case,
            self.runs,
            self.distinct,
            self.pairwise_rms.min,
            self.pairwise_rms.median,
            self.pairwise_rms.max,
            self.pairwise_max_abs.min,
            self.pairwise_max_abs.median,
            self.pairwise_max_abs.max,
            self.element_spread.median,
            self.element_spread.max,
            self.ulp.ulp_type.unwrap_or(UlpType::F32),
        );
        for (b, c) in ULP_BUCKETS.iter().zip(self.ulp.buckets) {
            if c > 0 {
                s += &format!(" {b}:{c}");
            }
        }
        s.push('\n');
        if let Some(fd) = &self.first_divergence {
            let diverged: Vec<usize> = fd.iter().flatten().copied().collect();
            s += &format!(
                "  greedy: {} of {} runs diverge from run 0{}\n",
                diverged.len(),
                fd.len(),
                if diverged.is_empty() {
                    String::new()
                } else {
                    format!(", first-divergence steps {:?}", diverged)
                }
            );
        }
        s
    }
}

#[cfg(test)]
fn test_case() -> Case {
    Case::new(
        crate::verify::case::Op::Logits,
        crate::ident::BackendKind::Cpu,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulp_distance_counts_representable_values_between() {
        let one = 1.0f64;
        let next_f32 = f32::from_bits(1.0f32.to_bits() + 1) as f64;
        assert_eq!(ulp_distance(one, next_f32, UlpType::F32), Some(1));
        let next_bf16 = f32::from_bits(1.0f32.to_bits() + (1 << 16)) as f64;
        assert_eq!(ulp_distance(one, next_bf16, UlpType::Bf16), Some(1));
        // Across zero: -min_positive and +min_positive are two apart.
        let tiny = f32::from_bits(1) as f64;
        assert_eq!(ulp_distance(-tiny, tiny, UlpType::F32), Some(2));
        assert_eq!(ulp_distance(f64::NAN, 1.0, UlpType::F32), None);
    }

    #[test]
    fn identical_runs_have_a_zero_envelope_and_one_distinct_result() {
        let r = vec![vec![1.0, 2.0, 3.0]; 5];
        let e = envelope(test_case(), &r, None, UlpType::F32);
        assert_eq!(
            (e.distinct, e.pairwise_rms.max, e.ulp.buckets[0]),
            (1, 0.0, 12)
        );
    }

    #[test]
    fn one_changed_run_is_counted_and_measured() {
        let mut r = vec![vec![1.0, 2.0, 3.0]; 4];
        r[2][1] = f32::from_bits(2.0f32.to_bits() + 3) as f64;
        let e = envelope(
            test_case(),
            &r,
            Some(&[vec![1, 2], vec![1, 2], vec![1, 3], vec![1, 2]]),
            UlpType::F32,
        );
        assert_eq!(e.distinct, 2);
        assert!(e.pairwise_rms.max > 0.0 && e.pairwise_rms.min == 0.0);
        assert_eq!(e.ulp.buckets[3], 1); // 3 ULPs
        assert_eq!(e.first_divergence, Some(vec![None, Some(1), None]));
    }
}

#[cfg(test)]
mod containment_tests {
    use super::*;

    fn env_with(max_rms: f64) -> Envelope {
        let mut e = envelope(
            test_case(),
            &[vec![0.0; 3], vec![0.0; 3]],
            None,
            UlpType::F32,
        );
        e.pairwise_rms.max = max_rms;
        e
    }

    #[test]
    fn a_distance_inside_a_nonzero_envelope_is_contained() {
        let c = containment(1e-3, &env_with(2e-3), None);
        assert!(c.contained && c.rule == ContainmentRule::Envelope);
        assert!(!containment(3e-3, &env_with(2e-3), None).contained);
    }

    #[test]
    fn a_zero_envelope_falls_back_to_the_truth_relative_rule() {
        let factor = tol(Tol::TruthRelativeFactor);
        let zero = env_with(0.0);
        let c = containment(1e-3, &zero, Some((1e-3, 1e-3)));
        assert!(c.contained && c.rule == ContainmentRule::TruthRelative);
        assert!(!containment(1e-3, &zero, Some(((factor + 0.1) * 1e-3, 1e-3))).contained);
        // Without truth there is nothing to judge by: not contained.
        assert!(!containment(1e-3, &zero, None).contained);
    }
}
