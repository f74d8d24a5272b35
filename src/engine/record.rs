//! Recorded runs: what the engine hands to verification, as serde types.
//!
//! Logits are stored as f32. Backends computing in bf16 produce bf16 values
//! (exact in f32); the f64 truth is rounded to f32 on recording, a relative
//! change below 6e-8, far inside every tolerance in the registry.

use crate::backend::DeviceInfo;
use crate::ident::{AttnPath, BackendKind, Numerics};
use crate::logits::top_k_of;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Everything that can change a run's numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub lockstep_version: String,
    pub backend: BackendKind,
    pub device: String,
    pub numerics: Numerics,
    pub path: AttnPath,
    /// Backend versions and flags, sorted by key.
    pub details: BTreeMap<String, String>,
    pub model_origin: String,
    pub model_hash: String,
}

impl Fingerprint {
    pub fn new(info: DeviceInfo, path: AttnPath, model_origin: &str, model_hash: &str) -> Self {
        Fingerprint {
            lockstep_version: env!("CARGO_PKG_VERSION").to_string(),
            backend: info.backend,
            device: info.device,
            numerics: info.numerics,
            path,
            details: info.details,
            model_origin: model_origin.to_string(),
            model_hash: model_hash.to_string(),
        }
    }

    /// `cpu/bf16/graph`-style label.
    pub fn label(&self) -> String {
        format!("{}/{}/{}", self.backend, self.numerics, self.path)
    }
}

/// One greedy step: the logits that chose `token`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub token: u32,
    /// Highest logits first: (token id, logit); ties by lower id.
    pub top: Vec<(u32, f32)>,
    /// top-1 minus top-2 logit.
    pub margin: f32,
    /// The full logit vector, when the run was asked to keep it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logits: Option<Vec<f32>>,
}

impl StepRecord {
    pub fn from_logits(logits: &[f64], top_k: usize, keep: bool) -> Self {
        let top = top_k_of(logits, top_k.max(2));
        // Every value NaN leaves no top: token 0 (the device argmax's pick)
        // with a NaN margin, which no near-tie rule accepts.
        let margin = top.first().map_or(f32::NAN, |first| {
            (first.1 as f64 - top.get(1).map_or(f64::NEG_INFINITY, |t| t.1 as f64)) as f32
        });
        StepRecord {
            token: top.first().map_or(0, |t| t.0),
            top: top.into_iter().take(top_k.max(1)).collect(),
            margin,
            logits: keep.then(|| logits.iter().map(|&v| v as f32).collect()),
        }
    }
}

/// A greedy generation, optionally with teacher-forced per-layer activations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedRun {
    pub fingerprint: Fingerprint,
    pub prompt: Vec<u32>,
    /// Generated tokens (one per step).
    pub tokens: Vec<u32>,
    pub steps: Vec<StepRecord>,
    /// Per step, each decoder layer's output for the token that step fed
    /// (`[layer][hidden]`), when the run was asked to keep hidden states.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden: Option<Vec<Vec<Vec<f32>>>>,
}

impl RecordedRun {
    /// Per-step full logits, if every step kept them.
    pub fn logits(&self) -> Option<Vec<&[f32]>> {
        self.steps.iter().map(|s| s.logits.as_deref()).collect()
    }
}

/// One scored step: the logits of the row that predicts `token`, at the
/// run's own precision (f64 for the f64 truth), and where `token` stands
/// among them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredStep {
    /// The token scored at this step (given, not chosen).
    pub token: u32,
    /// The row's greedy choice (the lowest id among its largest logits).
    pub greedy: u32,
    /// How many ids have a larger logit than `token`'s (0: the greedy
    /// choice or tied with it).
    pub rank: usize,
    /// log softmax of the row at `token`, computed in f64.
    pub logprob: f64,
    /// Highest logits first: (token id, logit); ties by lower id.
    pub top: Vec<(u32, f32)>,
    /// top-1 minus top-2 logit.
    pub margin: f32,
    /// The full row, when kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logits: Option<Vec<f64>>,
}

impl ScoredStep {
    pub fn from_logits(row: &[f64], token: u32, top_k: usize, keep: bool) -> Self {
        let greedy_step = StepRecord::from_logits(row, top_k, false);
        let at = row.get(token as usize).copied().unwrap_or(f64::NAN);
        let rank = row.iter().filter(|&&v| v > at).count();
        let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = row.iter().map(|&v| (v - max).exp()).sum();
        ScoredStep {
            token,
            greedy: greedy_step.token,
            rank,
            logprob: at - max - sum.ln(),
            top: greedy_step.top,
            margin: greedy_step.margin,
            logits: keep.then(|| row.to_vec()),
        }
    }
}

/// A token sequence scored teacher-forced: one step per scored token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredRun {
    pub fingerprint: Fingerprint,
    pub prompt: Vec<u32>,
    /// The scored tokens (one per step).
    pub tokens: Vec<u32>,
    pub steps: Vec<ScoredStep>,
}

impl ScoredRun {
    /// The sum of the steps' log-probabilities.
    pub fn total_logprob(&self) -> f64 {
        self.steps.iter().map(|s| s.logprob).sum()
    }
}
