//! External-oracle references: greedy runs of Hugging Face `transformers`
//! on the same weights, written by ci/oracle.py under golden/reference/.
//!
//! Full logit vectors of a 151936-word vocabulary are too large to commit, so
//! each step stores the logits at a fixed stride of indices (every index for
//! small vocabularies), the top-k, and statistics of the full vector. Relative
//! RMS is computed over the stored indices: a uniform sample of the vector.

use crate::error::{Error, Result};
use crate::verify::metrics::{diff, Diff};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FullStats {
    pub mean: f64,
    pub rms: f64,
    pub max: f64,
    pub argmax: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefStep {
    pub token: u32,
    pub top: Vec<(u32, f32)>,
    /// Logits at indices 0, stride, 2*stride, ...
    pub sample: Vec<f32>,
    pub stats: FullStats,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reference {
    pub schema: u32,
    pub preset: String,
    pub seed: u64,
    pub model_hash: String,
    /// `float32` or `bfloat16`.
    pub dtype: String,
    pub attn_implementation: String,
    pub tf32: bool,
    pub torch: String,
    pub transformers: String,
    pub device: String,
    /// Missing / unexpected / mismatched keys reported by from_pretrained.
    pub loading_info: serde_json::Value,
    pub stride: usize,
    pub prompt: Vec<u32>,
    pub tokens: Vec<u32>,
    pub steps: Vec<RefStep>,
}

impl Reference {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let r: Reference = serde_json::from_str(&text).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
        if r.steps.len() != r.tokens.len() || r.stride == 0 {
            return Err(Error::invalid(path.display().to_string(), "steps and tokens disagree, or stride is 0"));
        }
        Ok(r)
    }

    /// The full token sequence the reference saw: prompt then its own greedy tokens.
    pub fn teacher_tokens(&self) -> Vec<u32> {
        let mut t = self.prompt.clone();
        // The last generated token is never fed back.
        t.extend(&self.tokens[..self.tokens.len().saturating_sub(1)]);
        t
    }
}

/// Per-step comparison of our logits (teacher-forced on the reference's
/// tokens) with the reference's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepComparison {
    pub step: usize,
    pub diff: Diff,
    pub ref_margin: f32,
}

/// Compares full logit rows (one per step, same context as the reference)
/// at the reference's sampled indices.
pub fn compare_steps(reference: &Reference, ours: &[Vec<f64>]) -> Result<Vec<StepComparison>> {
    if ours.len() < reference.steps.len() {
        return Err(Error::invalid(
            "reference comparison",
            format!("{} steps of logits for {} reference steps", ours.len(), reference.steps.len()),
        ));
    }
    reference
        .steps
        .iter()
        .zip(ours)
        .enumerate()
        .map(|(i, (rs, row))| {
            let ours_s: Vec<f64> = row.iter().step_by(reference.stride).copied().collect();
            if ours_s.len() != rs.sample.len() {
                return Err(Error::invalid(
                    "reference comparison",
                    format!("step {i}: {} sampled logits vs {} in the reference", ours_s.len(), rs.sample.len()),
                ));
            }
            let theirs: Vec<f64> = rs.sample.iter().map(|&v| v as f64).collect();
            let margin = rs.top.first().map_or(0.0, |a| a.1) - rs.top.get(1).map_or(f32::NEG_INFINITY, |b| b.1);
            Ok(StepComparison {
                step: i,
                diff: diff(&ours_s, &theirs),
                ref_margin: margin,
            })
        })
        .collect()
}

/// Where two greedy token sequences first differ.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FirstDivergence {
    pub step: usize,
    pub ours: u32,
    pub theirs: u32,
}

pub fn first_divergence(ours: &[u32], theirs: &[u32]) -> Option<FirstDivergence> {
    ours.iter()
        .zip(theirs)
        .position(|(a, b)| a != b)
        .map(|step| FirstDivergence {
            step,
            ours: ours[step],
            theirs: theirs[step],
        })
}
