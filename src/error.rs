//! One error type for the whole crate. Every variant carries the file, tensor or
//! field it is about, so a user can act on the message without a debugger.

use crate::ident::BackendKind;
use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: config field `{field}`: {problem}")]
    ConfigField {
        path: PathBuf,
        field: String,
        problem: String,
    },
    #[error("{path}: dump field `{field}`: {problem}")]
    DumpField {
        path: PathBuf,
        field: String,
        problem: String,
    },
    #[error("{path}: unsupported architecture {found:?}; lockstep runs Qwen3ForCausalLM and Qwen3MoeForCausalLM")]
    UnsupportedArchitecture { path: PathBuf, found: Vec<String> },
    #[error("{path}: safetensors: {problem}")]
    Safetensors { path: PathBuf, problem: String },
    #[error("{path}: tensor `{tensor}` is missing")]
    MissingTensor { path: PathBuf, tensor: String },
    #[error("{path}: tensor `{tensor}` has shape {got:?}, expected {expected:?}")]
    WeightShape {
        path: PathBuf,
        tensor: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("{path}: tensor `{tensor}` has dtype {got}, expected one of {expected}")]
    WeightDtype {
        path: PathBuf,
        tensor: String,
        expected: String,
        got: String,
    },
    #[error("{path}: tensor `{tensor}` holds a non-finite value ({value}) at flat index {index}")]
    NonFiniteWeight {
        path: PathBuf,
        tensor: String,
        index: usize,
        value: f32,
    },
    /// A run's activations or logits left the finite numbers: the model
    /// overflows its compute dtype, or the backend computed garbage. Either
    /// way nothing downstream of it can be compared.
    #[error("{backend}: non-finite {what} at {at}: {value} at flat index {index}")]
    NonFinite {
        backend: crate::ident::BackendKind,
        what: String,
        at: String,
        index: usize,
        value: f64,
    },
    /// A model dimension that one backend's kernels cannot take, refused
    /// before anything is uploaded (the CPU reference takes every shape).
    #[error("{model}: config field `{field}` = {value}: the {backend} backend does not take it (supported: {supported})")]
    UnsupportedShape {
        model: String,
        backend: BackendKind,
        field: &'static str,
        value: usize,
        supported: &'static str,
    },
    #[error(
        "unknown preset `{0}`; known presets: tiny, tiny-moe, qwen3-0.6b, qwen3-8b, qwen3-30b-a3b"
    )]
    UnknownPreset(String),
    #[error("bad model spec `{spec}`: {problem}")]
    ModelSpec { spec: String, problem: String },
    #[error("prompt: {0}")]
    Prompt(String),
    #[error("tokenizer {path}: {problem}")]
    Tokenizer { path: PathBuf, problem: String },
    #[error(
        "backend `{backend}` is not compiled into this build (enable the `{backend}` feature)"
    )]
    BackendNotCompiled { backend: BackendKind },
    #[error("backend `{backend}`: {problem}")]
    Backend {
        backend: BackendKind,
        problem: String,
    },
    /// The backend is compiled in but this machine cannot run it (no
    /// driver, no GPU, a CPU-only libmlx): a test or verify row skips on
    /// this and on `BackendNotCompiled`, and fails on any other error.
    #[error("backend `{backend}` is unavailable here: {problem}")]
    Unavailable {
        backend: BackendKind,
        problem: String,
    },
    /// A model that cannot run on the backend it was given (too large, a
    /// step replayed that was never recorded): the engine's, not a device's.
    #[error("engine: {problem}")]
    Engine { problem: String },
    #[error("shape mismatch in {op}: {problem}")]
    Shape { op: &'static str, problem: String },
    #[error("{what}: {problem}")]
    Invalid { what: String, problem: String },
}

impl Error {
    /// Whether this says only that a backend cannot run on this machine or
    /// build (a loud skip, not a failure).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Error::BackendNotCompiled { .. } | Error::Unavailable { .. }
        )
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn invalid(what: impl Into<String>, problem: impl Into<String>) -> Self {
        Error::Invalid {
            what: what.into(),
            problem: problem.into(),
        }
    }
}
