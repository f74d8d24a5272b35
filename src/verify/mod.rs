//! Verification over recorded runs: metrics, the tolerance registry, and
//! comparison against external references. Never reaches into a backend.

pub mod bisect;
pub mod case;
pub mod checks;
pub mod containment;
pub mod decode;
pub mod divergence;
pub mod envelope;
pub mod golden;
pub mod layout;
pub mod metrics;
pub mod parity;
pub mod reference;
pub mod rows;
pub mod summary;
pub mod tolerances;
