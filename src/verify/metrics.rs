//! Distances between two tensors, computed in f64 over values upcast from
//! their storage type. NaN never passes; an infinity passes only when matched
//! by an infinity of the same sign in the reference.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Diff {
    pub n: usize,
    /// sqrt(mean((a - b)^2)) over finite pairs.
    pub rms: f64,
    /// rms / sqrt(mean(b^2)); b is the reference.
    pub rel_rms: f64,
    /// sum((a - b)^2) / sum(b^2).
    pub nmse: f64,
    pub max_abs: f64,
    pub max_abs_index: usize,
    pub cosine: f64,
    /// First index where a NaN appears or an infinity is unmatched.
    pub first_non_finite: Option<usize>,
}

impl Diff {
    /// Whether the pair is free of NaN and unmatched infinities.
    pub fn finite_ok(&self) -> bool {
        self.first_non_finite.is_none()
    }
}

/// Compares `a` against the reference `b`. Panics if lengths differ: callers
/// check shapes first (a shape mismatch is its own, earlier failure).
pub fn diff(a: &[f64], b: &[f64]) -> Diff {
    assert_eq!(a.len(), b.len(), "diff of tensors with different lengths");
    let (mut sq, mut ref_sq, mut dot, mut a_sq) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    let (mut max_abs, mut max_i, mut bad) = (0.0f64, 0usize, None);
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        if x.is_nan() || y.is_nan() {
            bad.get_or_insert(i);
            continue;
        }
        if x.is_infinite() || y.is_infinite() {
            if x != y {
                bad.get_or_insert(i);
            }
            continue;
        }
        let d = x - y;
        sq += d * d;
        ref_sq += y * y;
        a_sq += x * x;
        dot += x * y;
        if d.abs() > max_abs {
            max_abs = d.abs();
            max_i = i;
        }
    }
    let n = a.len().max(1) as f64;
    let rms = (sq / n).sqrt();
    let ref_rms = (ref_sq / n).sqrt();
    Diff {
        n: a.len(),
        rms,
        rel_rms: if ref_rms > 0.0 {
            rms / ref_rms
        } else if rms == 0.0 {
            0.0
        } else {
            f64::INFINITY
        },
        nmse: if ref_sq > 0.0 {
            sq / ref_sq
        } else if sq == 0.0 {
            0.0
        } else {
            f64::INFINITY
        },
        max_abs,
        max_abs_index: max_i,
        cosine: if a_sq > 0.0 && ref_sq > 0.0 {
            dot / (a_sq.sqrt() * ref_sq.sqrt())
        } else {
            f64::NAN
        },
        first_non_finite: bad,
    }
}

pub fn diff_f32(a: &[f32], b: &[f32]) -> Diff {
    let a: Vec<f64> = a.iter().map(|&x| x as f64).collect();
    let b: Vec<f64> = b.iter().map(|&x| x as f64).collect();
    diff(&a, &b)
}

#[cfg(test)]
mod tests {
    use super::*;

    use approx::{assert_relative_eq, assert_ulps_eq};

    #[test]
    fn identical_tensors_have_zero_distance() {
        let d = diff(&[1.0, -2.0, 3.0], &[1.0, -2.0, 3.0]);
        assert_eq!((d.rms, d.max_abs, d.nmse), (0.0, 0.0, 0.0));
        assert_ulps_eq!(d.cosine, 1.0, max_ulps = 2);
    }

    #[test]
    fn rms_and_max_abs_locate_the_difference() {
        let d = diff(&[1.0, 2.0, 3.0, 4.0], &[1.0, 2.0, 3.5, 4.0]);
        assert_ulps_eq!(d.rms, 0.25);
        assert_eq!((d.max_abs, d.max_abs_index), (0.5, 2));
        // rel = rms / rms(ref); nmse = sum d^2 / sum ref^2.
        let ref_rms = ((1.0 + 4.0 + 12.25 + 16.0) / 4.0f64).sqrt();
        assert_relative_eq!(d.rel_rms, 0.25 / ref_rms, max_relative = 1e-14);
        assert_relative_eq!(d.nmse, 0.25 / 33.25, max_relative = 1e-14);
    }

    #[test]
    fn cosine_of_orthogonal_and_opposite_vectors() {
        assert_relative_eq!(diff(&[1.0, 0.0], &[0.0, 1.0]).cosine, 0.0);
        assert_relative_eq!(diff(&[1.0, 2.0], &[-1.0, -2.0]).cosine, -1.0);
    }

    #[test]
    fn nan_never_passes_and_infinities_must_match() {
        assert_eq!(
            diff(&[1.0, f64::NAN], &[1.0, f64::NAN]).first_non_finite,
            Some(1)
        );
        assert_eq!(
            diff(&[f64::INFINITY], &[f64::INFINITY]).first_non_finite,
            None
        );
        assert_eq!(
            diff(&[f64::INFINITY], &[f64::NEG_INFINITY]).first_non_finite,
            Some(0)
        );
        assert_eq!(diff(&[1.0], &[f64::INFINITY]).first_non_finite, Some(0));
    }
}
