//! Jobs drive the engine to produce recorded runs and hand them to
//! `verify`: the glue the command line and the tests share. Each file holds
//! one concern; every job is written once over `Backend`, so each backend is
//! measured by the same procedure. Verification itself never touches a
//! backend, and nothing here has a `cfg`: a backend not compiled in is a
//! stub whose constructor says so (`backend::stub`).

pub mod accelerator;
pub mod batch;
pub mod decode;
pub mod divergence;
pub mod envelope;
pub mod fixture;
pub mod golden;
pub mod layout;
pub mod oracle;
pub mod parity;
pub mod score;
pub mod tp;
pub mod trace;
pub mod verify;

pub use accelerator::Accelerator;
pub use envelope::{envelope_of, EnvelopeLevel};
pub use fixture::{continuation, load, load_cpu, Fixture};

/// The default models `lockstep verify` runs on.
pub const DEFAULT_PRESETS: [&str; 2] = ["tiny", "tiny-moe"];

/// The prompt the default checks start from.
pub const DEFAULT_PROMPT: [u32; 8] = [1, 17, 42, 99, 3, 250, 7, 8];

/// Greedy tokens after `DEFAULT_PROMPT` in a fixture's sequence, so that
/// checks reach positions well past the prompt.
pub const CONTINUATION_TOKENS: usize = 24;
