//! `lockstep bench --split`: what each kernel family costs inside a recorded
//! decode step, from rows timed with the family left out.

use super::{BenchReport, BenchRow};
use crate::backend::cuda::KernelFamily;

impl BenchReport {
    /// The split tables of every whole-step row that has omitting rows.
    pub(super) fn split_text(&self) -> String {
        let mut s = String::new();
        for base in self.rows.iter().filter(|r| r.omitted.is_none()) {
            let parts = self.split_of(base);
            if parts.is_empty() {
                continue;
            }
            s += &format!(
                "\nin-step split, {} path, {} (best ms/token with each family left out of the recorded step):\n",
                base.path.name(),
                base.mode.map_or("-".to_string(), |m| m.to_string())
            );
            s += "family        launches/token  ms/token  share of step\n";
            let mut sum = 0.0;
            for p in &parts {
                sum += p.ms_per_token;
                s += &format!(
                    "{:<13} {:>14.1} {:>9.3} {:>13.1}%\n",
                    p.family.name(),
                    p.launches_per_token,
                    p.ms_per_token,
                    100.0 * p.ms_per_token / base.best_ms_per_token
                );
            }
            s += &format!(
                "{:<13} {:>14} {:>9.3} {:>13.1}%  (the step less the families' sum)\n",
                "rest",
                "",
                base.best_ms_per_token - sum,
                100.0 * (base.best_ms_per_token - sum) / base.best_ms_per_token
            );
        }
        s
    }

    /// The whole-step row an omitting row was timed against: the same
    /// path and settings with nothing left out.
    pub(super) fn base_of(&self, row: &BenchRow) -> Option<&BenchRow> {
        self.rows.iter().find(|b| {
            b.omitted.is_none()
                && b.path == row.path
                && b.mode == row.mode
                && b.cuda_graphs == row.cuda_graphs
                && b.products == row.products
        })
    }

    /// What each family left out of `base`'s recorded step cost it: the
    /// launches and the best ms per token the step lost without them.
    pub fn split_of(&self, base: &BenchRow) -> Vec<FamilyCost> {
        self.rows
            .iter()
            .filter_map(|r| {
                let family = r.omitted?;
                let b = self.base_of(r)?;
                if !std::ptr::eq(b, base) {
                    return None;
                }
                Some(FamilyCost {
                    family,
                    launches_per_token: base.launches_per_token.unwrap_or(f64::NAN)
                        - r.launches_per_token.unwrap_or(f64::NAN),
                    ms_per_token: base.best_ms_per_token - r.best_ms_per_token,
                })
            })
            .collect()
    }
}

/// One kernel family's cost inside a recorded decode step (`--split`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FamilyCost {
    pub family: KernelFamily,
    pub launches_per_token: f64,
    pub ms_per_token: f64,
}
