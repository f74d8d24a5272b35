//! The tolerance registry: one committed file (`tolerances.json` at the
//! repository root, embedded at build time), every entry with a name, metric,
//! value and reason. Code asks for tolerances by name only.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tolerance {
    pub name: String,
    pub metric: String,
    pub value: f64,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Registry {
    pub schema: u32,
    pub tolerances: Vec<Tolerance>,
}

const EMBEDDED: &str = include_str!("../../tolerances.json");

impl Registry {
    pub fn parse(text: &str) -> Result<Self> {
        let r: Registry = serde_json::from_str(text)
            .map_err(|e| Error::invalid("tolerances.json", e.to_string()))?;
        let mut names: Vec<&str> = r.tolerances.iter().map(|t| t.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::invalid(
                "tolerances.json",
                format!("`{}` is defined twice", w[0]),
            ));
        }
        for t in &r.tolerances {
            if !(t.value.is_finite() && t.value >= 0.0) || t.reason.trim().is_empty() {
                return Err(Error::invalid(
                    "tolerances.json",
                    format!(
                        "`{}` needs a finite non-negative value and a reason",
                        t.name
                    ),
                ));
            }
        }
        Ok(r)
    }

    pub fn get(&self, name: &str) -> Option<&Tolerance> {
        self.tolerances.iter().find(|t| t.name == name)
    }
}

/// The committed registry.
pub fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(|| Registry::parse(EMBEDDED).expect("committed tolerances.json is valid"))
}

/// A tolerance's value by name. Panics on an unknown name: that is a bug in
/// the caller, caught by any test that runs it.
pub fn tol(name: &str) -> f64 {
    registry()
        .get(name)
        .unwrap_or_else(|| panic!("tolerance `{name}` is not in tolerances.json"))
        .value
}
