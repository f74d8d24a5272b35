//! MLX's part of the jobs: a model loaded on `MlxBackend`, MLX goldens, and
//! MLX's rows of `lockstep verify`. Without the `mlx` feature every entry
//! point returns `Error::BackendNotCompiled { backend: "mlx" }`, so callers
//! need no cfg of their own.
//!
//! The MLX-specific part is only what a backend alone can give (its routing
//! record for the MoE row rule); the judging is `crate::verify`'s.

use super::GoldenCase;
#[cfg(not(feature = "mlx"))]
use crate::error::Error;
use crate::error::Result;
use crate::model::Model;
use crate::verify::golden::GoldenBody;
use crate::verify::summary::CheckResult;

/// Teacher-forced runs per MLX envelope in `verify`. MLX on its CPU device
/// gave one bitwise result in 20 runs (docs/mlx.md, tests/mlx_backend.rs);
/// five keep `verify` quick and still catch a backend that is not stable
/// from run to run, which shows within two runs.
pub const MLX_ENVELOPE_RUNS: usize = 5;

/// MLX goldens: each default preset on both paths, bf16 only (MLX
/// computes in bf16).
pub fn golden_cases() -> Vec<GoldenCase> {
    super::generic::accelerator_golden_cases()
}

#[cfg(feature = "mlx")]
pub use with_mlx::*;

#[cfg(not(feature = "mlx"))]
pub fn golden_run(_case: &GoldenCase) -> Result<(GoldenBody, crate::engine::record::Fingerprint)> {
    Err(Error::BackendNotCompiled { backend: "mlx" })
}

#[cfg(not(feature = "mlx"))]
pub fn verify_rows(
    _model: &Model,
    _seq: &[u32],
    _golden_root: &std::path::Path,
    _push: &mut dyn FnMut(CheckResult),
) -> Result<()> {
    Err(Error::BackendNotCompiled { backend: "mlx" })
}

#[cfg(feature = "mlx")]
mod with_mlx {
    use super::*;
    use crate::backend::mlx::{MlxBackend, RowRouting};
    use crate::backend::AttnPath;
    use crate::engine::Engine;
    use crate::jobs::generic::{
        accelerator_rows, cpu_reference_logits, golden_run_on, LogitsVsCpu,
    };
    use crate::progress::Progress;
    use crate::verify::metrics::diff;
    use crate::verify::rows::{judge_rows, RowVerdict};

    /// Loads `model` on MLX with a progress bar.
    pub fn load(model: &Model) -> Result<Engine<MlxBackend>> {
        let mut p = Progress::new("loading", model.expected_tensors().len());
        Engine::load_with_progress(model, MlxBackend::new()?, &mut |d, _| p.set(d))
    }

    pub fn golden_run(
        case: &GoldenCase,
    ) -> Result<(GoldenBody, crate::engine::record::Fingerprint)> {
        let model = Model::open(&format!("synth:{}:0", case.preset))?;
        golden_run_on(&Engine::load(&model, MlxBackend::new()?)?, case)
    }

    /// For each row, the closest routing decision to a tie over the MoE
    /// calls of one forward pass: (relative gap, call index = MoE layer).
    pub fn nearest_ties(log: &[Vec<RowRouting>], rows: usize) -> Vec<Option<(f32, usize)>> {
        (0..rows)
            .map(|r| {
                log.iter()
                    .enumerate()
                    .filter_map(|(l, calls)| calls.get(r).map(|c| (c.boundary_gap, l)))
                    .min_by(|a, b| a.0.total_cmp(&b.0))
            })
            .collect()
    }

    /// MLX's graph path vs the CPU reference in bf16, teacher-forced on
    /// `tokens`, judged row by row (`crate::verify::rows`, tolerance
    /// `mlx_bf16_vs_cpu_bf16_logits_rel_rms`) with MLX's own routing record
    /// for MoE models. Also returns each row's relative RMS.
    pub fn logits_vs_cpu(
        mlx: &Engine<MlxBackend>,
        model: &Model,
        tokens: &[u32],
    ) -> Result<(RowVerdict, Vec<f64>)> {
        let c = cpu_reference_logits(model, &mlx.model_hash, tokens, "mlx vs cpu logits")?;
        mlx.backend.record_routing(true);
        let m = mlx.teacher_forced(tokens, AttnPath::Graph, &mut Default::default());
        let log = mlx.backend.take_routing_log();
        mlx.backend.record_routing(false);
        let m = m?;
        let rows: Vec<f64> = m.iter().zip(&c).map(|(m, c)| diff(m, c).rel_rms).collect();
        let verdict = judge_rows(
            &rows,
            &nearest_ties(&log, rows.len()),
            "mlx_bf16_vs_cpu_bf16_logits_rel_rms",
        );
        Ok((verdict, rows))
    }

    /// MLX's rows of `verify` for one default model: logits vs the CPU
    /// reference, fused vs graph at op level, an envelope per path, and
    /// the MLX goldens of the preset.
    pub fn verify_rows(
        model: &Model,
        seq: &[u32],
        golden_root: &std::path::Path,
        push: &mut dyn FnMut(CheckResult),
    ) -> Result<()> {
        let mlx = Engine::load(model, MlxBackend::new()?)?;
        let (verdict, rows) = logits_vs_cpu(&mlx, model, seq)?;
        let logits = LogitsVsCpu {
            tolerance: "mlx_bf16_vs_cpu_bf16_logits_rel_rms",
            verdict,
            rows: rows.len(),
        };
        accelerator_rows(
            "mlx",
            &mlx,
            model,
            seq,
            logits,
            MLX_ENVELOPE_RUNS,
            golden_root,
            push,
        )
    }
}
