//! lockstep: a deterministic-parity verification suite for LLM inference.
//!
//! Data flows one way: `model` (files, presets) -> `engine` (Qwen3 forward on
//! a `backend`, with a path) -> recorded run -> `verify` -> `report`.

pub mod backend;
pub mod bench;
pub mod engine;
pub mod error;
pub mod ident;
pub mod jobs;
pub mod logits;
pub mod model;
pub mod progress;
pub mod report;
pub mod skip;
pub mod util;
pub mod verify;

pub use error::{Error, Result};
