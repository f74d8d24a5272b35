//! External-oracle references: greedy runs of Hugging Face `transformers`
//! on the same weights, written by ci/oracle.py under golden/reference/.
//!
//! Full logit vectors of a 151936-word vocabulary are too large to commit, so
//! each step stores the logits at a fixed stride of indices (every index for
//! small vocabularies), the top-k, and statistics of the full vector. Relative
//! RMS is computed over the stored indices: a uniform sample of the vector.

use crate::engine::record::RecordedRun;
use crate::error::{Error, Result};
use crate::verify::metrics::{diff, Diff};
use crate::verify::tolerances::{tol, Tol};
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
    /// Logits at indices 0, stride, 2*stride, ... (f32 values of a float32
    /// or bfloat16 run, f64 of a float64 run: read exactly either way).
    pub sample: Vec<f64>,
    pub stats: FullStats,
}

/// The dtype transformers ran in, which picks the CPU arithmetic a
/// reference is compared with and the tolerances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RefDtype {
    /// Compared with f64 truth, value for value at f64 precision.
    Float64,
    /// Compared with f64 truth.
    Float32,
    /// Compared with the bf16-faithful reference.
    Bfloat16,
}

impl RefDtype {
    pub fn name(self) -> &'static str {
        match self {
            RefDtype::Float64 => "float64",
            RefDtype::Float32 => "float32",
            RefDtype::Bfloat16 => "bfloat16",
        }
    }

    /// The CPU arithmetic a reference of this dtype is compared with.
    pub fn numerics(self) -> crate::ident::Numerics {
        match self {
            RefDtype::Float64 | RefDtype::Float32 => crate::ident::Numerics::F64,
            RefDtype::Bfloat16 => crate::ident::Numerics::Bf16,
        }
    }
}

impl std::fmt::Display for RefDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reference {
    pub schema: u32,
    pub preset: String,
    pub seed: u64,
    pub model_hash: String,
    pub dtype: RefDtype,
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
        let text = crate::util::read_text_bounded(path, crate::util::limits::REFERENCE)?;
        let r: Reference = serde_json::from_str(&text).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
        if r.steps.len() != r.tokens.len() || r.stride == 0 {
            return Err(Error::invalid(
                path.display().to_string(),
                "steps and tokens disagree, or stride is 0",
            ));
        }
        if r.prompt.is_empty() {
            return Err(Error::invalid(
                path.display().to_string(),
                "the prompt holds no tokens",
            ));
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
            format!(
                "{} steps of logits for {} reference steps",
                ours.len(),
                reference.steps.len()
            ),
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
                    format!(
                        "step {i}: {} sampled logits vs {} in the reference",
                        ours_s.len(),
                        rs.sample.len()
                    ),
                ));
            }
            let theirs = rs.sample.clone();
            let margin = rs.top.first().map_or(0.0, |a| a.1)
                - rs.top.get(1).map_or(f32::NEG_INFINITY, |b| b.1);
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

/// The verdict on one reference comparison, with everything needed to read it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReferenceReport {
    pub preset: String,
    pub dtype: RefDtype,
    pub reference_device: String,
    pub ours: String,
    pub steps: Vec<StepComparison>,
    pub worst_rel_rms: f64,
    pub rel_rms_tolerance: (Tol, f64),
    pub first_divergence: Option<FirstDivergence>,
    /// The smaller of the two sides' top-1/top-2 margins at the divergence.
    pub divergence_margin: Option<f32>,
    pub near_tie_tolerance: (Tol, f64),
    /// MoE models: the first step past the logits bound, excused by our
    /// run's routing decision nearest a tie there (within
    /// `moe_routing_near_tie_bf16`): (step, gap, layer). A flipped expert
    /// moves that step and, through the context, the later ones: neither
    /// they nor a token change from there on are judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_near_tie: Option<(usize, f32, usize)>,
    pub pass: bool,
}

/// The tolerances a reference is judged by on `backend`: the arithmetic
/// its dtype calls for, and for a bfloat16 reference run on an accelerator
/// that accelerator's own bound against the CPU reference's bf16 mode (the
/// same argument: another bf16 implementation, its own summation order).
pub fn tolerance_names(reference: &Reference, backend: crate::ident::BackendKind) -> (Tol, Tol) {
    use crate::ident::BackendKind;
    match reference.dtype {
        // Token changes are judged on lockstep's recorded step margins,
        // which are f32 in either run: the f32 near-tie bound applies.
        RefDtype::Float64 => (
            Tol::TruthVsTransformersF64LogitsRelRms,
            Tol::NearTieMarginF32,
        ),
        RefDtype::Float32 => (
            Tol::TruthVsTransformersF32LogitsRelRms,
            Tol::NearTieMarginF32,
        ),
        RefDtype::Bfloat16 => (
            match backend {
                BackendKind::Cpu => Tol::CpuBf16VsTransformersBf16LogitsRelRms,
                BackendKind::Mlx => Tol::MlxBf16VsCpuBf16LogitsRelRms,
                BackendKind::MlxGpu => Tol::MlxGpuBf16VsCpuBf16LogitsRelRms,
                BackendKind::Cuda => Tol::CudaVsCpuBf16LogitsRelRms,
            },
            Tol::NearTieMarginBf16,
        ),
    }
}

/// Judges our teacher-forced logits (one row per reference step, same
/// context) and our own greedy run against the reference. Greedy tokens may
/// differ only at a near-tie: a step where either side's top-1/top-2 margin
/// is below the near-tie tolerance.
pub fn judge(
    reference: &Reference,
    teacher_logits: &[Vec<f64>],
    ours: &RecordedRun,
) -> Result<ReferenceReport> {
    judge_with_ties(reference, teacher_logits, ours, &[])
}

/// `judge`, with `ties[i]` our teacher-forced row i's routing decision
/// nearest a tie (gap, layer) for MoE models (empty: none excused).
pub fn judge_with_ties(
    reference: &Reference,
    teacher_logits: &[Vec<f64>],
    ours: &RecordedRun,
    ties: &[Option<(f32, usize)>],
) -> Result<ReferenceReport> {
    if ours.prompt != reference.prompt {
        return Err(Error::invalid(
            "reference comparison",
            "our run used a different prompt",
        ));
    }
    if ours.fingerprint.model_hash != reference.model_hash {
        return Err(Error::invalid(
            "reference comparison",
            format!(
                "reference is for model {} but our run is of {}",
                reference.model_hash, ours.fingerprint.model_hash
            ),
        ));
    }
    let steps = compare_steps(reference, teacher_logits)?;
    let (rel_name, tie_name) = tolerance_names(reference, ours.fingerprint.backend);
    let (rel_tol, tie_tol) = (tol(rel_name), tol(tie_name));
    let near = tol(Tol::MoeRoutingNearTieBf16);
    let outside = steps
        .iter()
        .position(|s| s.diff.rel_rms.is_nan() || s.diff.rel_rms > rel_tol || !s.diff.finite_ok());
    let routing_near_tie = outside.and_then(|i| match ties.get(i) {
        Some(&Some((gap, layer))) if f64::from(gap) <= near && steps[i].diff.finite_ok() => {
            Some((i, gap, layer))
        }
        _ => None,
    });
    let judged = routing_near_tie.map_or(steps.len(), |t| t.0);
    let worst = steps[..judged]
        .iter()
        .map(|s| s.diff.rel_rms)
        .fold(0.0, f64::max);
    let div = first_divergence(&ours.tokens, &reference.tokens)
        .filter(|d| routing_near_tie.is_none_or(|t| d.step < t.0));
    // A step without two recorded top entries on either side has no margin
    // to excuse a divergence there (NaN: no near-tie rule accepts it).
    let margin = div.as_ref().map(|d| {
        let theirs = reference
            .steps
            .get(d.step)
            .and_then(|s| Some(s.top.first()?.1 - s.top.get(1)?.1))
            .unwrap_or(f32::NAN);
        let mine = ours.steps.get(d.step).map_or(f32::NAN, |s| s.margin);
        if theirs.is_nan() || mine.is_nan() {
            f32::NAN
        } else {
            mine.min(theirs)
        }
    });
    let tokens_ok =
        margin.is_none_or(|m| (m as f64) < tie_tol) && ours.tokens.len() == reference.tokens.len();
    Ok(ReferenceReport {
        preset: reference.preset.clone(),
        dtype: reference.dtype,
        reference_device: reference.device.clone(),
        ours: ours.fingerprint.label(),
        pass: worst <= rel_tol && tokens_ok && steps[..judged].iter().all(|s| s.diff.finite_ok()),
        routing_near_tie,
        steps,
        worst_rel_rms: worst,
        rel_rms_tolerance: (rel_name, rel_tol),
        first_divergence: div,
        divergence_margin: margin,
        near_tie_tolerance: (tie_name, tie_tol),
    })
}

impl ReferenceReport {
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} vs transformers {} ({}): {}",
            self.ours,
            self.dtype,
            self.reference_device,
            if self.pass { "PASS" } else { "FAIL" }
        );
        let _ = writeln!(s, "step  rel_rms     max_abs     ref_margin");
        for st in &self.steps {
            let _ = writeln!(
                s,
                "{:>4}  {:.3e}   {:.3e}   {:.4}",
                st.step, st.diff.rel_rms, st.diff.max_abs, st.ref_margin
            );
        }
        let _ = writeln!(
            s,
            "worst rel_rms {:.3e} ({} = {:e})",
            self.worst_rel_rms, self.rel_rms_tolerance.0, self.rel_rms_tolerance.1
        );
        if let Some((step, gap, layer)) = self.routing_near_tie {
            let _ = writeln!(
                s,
                "MoE routing near-tie at step {step} (layer {layer}, gap {gap:.2e}): that step and the later ones are not judged"
            );
        }
        match (&self.first_divergence, self.divergence_margin) {
            (Some(d), Some(m)) => {
                let _ = writeln!(
                    s,
                    "greedy tokens first differ at step {} (ours {}, theirs {}); margin {m:.5}: {} {} = {}",
                    d.step,
                    d.ours,
                    d.theirs,
                    if (m as f64) < self.near_tie_tolerance.1 { "near-tie, below" } else { "REGRESSION, not below" },
                    self.near_tie_tolerance.0,
                    self.near_tie_tolerance.1
                );
            }
            _ => match self.routing_near_tie {
                Some((step, ..)) => {
                    let _ = writeln!(s, "greedy tokens agree for the {step} steps judged");
                }
                None => {
                    let _ = writeln!(s, "greedy tokens agree for all {} steps", self.steps.len());
                }
            },
        }
        s
    }
}
