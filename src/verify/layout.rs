//! The fused path's bits under changes of layout alone: the same rows at
//! another offset in a batch, a session whose KV cache has room for more
//! positions, buffers the allocator handed out before. None of these may
//! change a bit of a deterministic fused path (where one does, the output
//! depends on something no caller controls).

use crate::verify::case::Case;
use serde::{Deserialize, Serialize};

/// One change of layout and what it did to the result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Perturbation {
    /// What changed, e.g. "rows at offset 3 of 7".
    pub what: String,
    pub elements: usize,
    /// The first element whose bits differ: (index, reference, perturbed).
    pub first_difference: Option<(usize, f64, f64)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayoutReport {
    pub case: Case,
    pub perturbations: Vec<Perturbation>,
    pub pass: bool,
}

/// `what` judged: `perturbed` bit for bit against `reference`.
pub fn compare(what: impl Into<String>, reference: &[f64], perturbed: &[f64]) -> Perturbation {
    let first_difference = if reference.len() != perturbed.len() {
        Some((reference.len().min(perturbed.len()), f64::NAN, f64::NAN))
    } else {
        reference
            .iter()
            .zip(perturbed)
            .position(|(a, b)| a.to_bits() != b.to_bits())
            .map(|i| (i, reference[i], perturbed[i]))
    };
    Perturbation {
        what: what.into(),
        elements: reference.len(),
        first_difference,
    }
}

impl LayoutReport {
    pub fn new(case: Case, perturbations: Vec<Perturbation>) -> Self {
        let pass =
            !perturbations.is_empty() && perturbations.iter().all(|p| p.first_difference.is_none());
        LayoutReport {
            case,
            perturbations,
            pass,
        }
    }

    /// The perturbations that changed bits, or how many held.
    pub fn summary(&self) -> String {
        let moved: Vec<String> = self
            .perturbations
            .iter()
            .filter_map(|p| {
                p.first_difference
                    .map(|(i, a, b)| format!("{}: element {i} {a:e} -> {b:e}", p.what))
            })
            .collect();
        if moved.is_empty() {
            format!(
                "{} layouts bitwise the same ({})",
                self.perturbations.len(),
                self.perturbations
                    .iter()
                    .map(|p| p.what.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        } else {
            format!("changed bits: {}", moved.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::case::Op;

    #[test]
    fn one_changed_bit_fails_and_names_where() {
        let case = Case::new(Op::Layout, crate::ident::BackendKind::Cpu);
        let same = compare("offset 1", &[1.0, 2.0], &[1.0, 2.0]);
        let r = LayoutReport::new(case.clone(), vec![same.clone()]);
        assert!(r.pass, "{}", r.summary());
        let next = f64::from_bits(2.0f64.to_bits() + 1);
        let moved = compare("capacity", &[1.0, 2.0], &[1.0, next]);
        assert_eq!(moved.first_difference.map(|d| d.0), Some(1));
        let r = LayoutReport::new(case.clone(), vec![same, moved]);
        assert!(!r.pass && r.summary().contains("capacity: element 1"));
        assert!(!LayoutReport::new(case.clone(), vec![]).pass);
        let short = compare("short", &[1.0, 2.0], &[1.0]);
        assert!(!LayoutReport::new(case, vec![short]).pass);
    }
}
