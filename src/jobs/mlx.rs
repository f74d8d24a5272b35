//! MLX's part of the jobs: a model loaded on `MlxBackend`, MLX goldens, and
//! MLX's rows of `lockstep verify`. Without the `mlx` feature every entry
//! point returns `Error::BackendNotCompiled { backend: "mlx" }`, so callers
//! need no cfg of their own.
//!
//! The MLX-specific part is only what a backend alone can give (its routing
//! record for the MoE row rule); the judging is `crate::verify`'s.

use super::{GoldenCase, DEFAULT_PRESETS};
use crate::backend::cpu::Numerics;
use crate::backend::AttnPath;
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

/// MLX goldens: each default preset on both paths. MLX computes in bf16
/// only, so there is no f64 variant.
pub fn golden_cases() -> Vec<GoldenCase> {
    let mut v = Vec::new();
    for preset in DEFAULT_PRESETS {
        for path in [AttnPath::Graph, AttnPath::Fused] {
            v.push(GoldenCase {
                preset,
                numerics: Numerics::Bf16,
                path,
            });
        }
    }
    v
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
    use crate::backend::cpu::CpuBackend;
    use crate::backend::mlx::{MlxBackend, RowRouting};
    use crate::engine::Engine;
    use crate::error::Error;
    use crate::jobs::generic::{golden_run_on, model_name, op_parity_on};
    use crate::jobs::{envelope_row, golden_row, parity_rows};
    use crate::progress::Progress;
    use crate::verify::envelope::UlpType;
    use crate::verify::metrics::diff;
    use crate::verify::rows::{judge_rows, RowVerdict};
    use crate::verify::summary::Status;

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
        let cpu = Engine::load(model, CpuBackend::new(Numerics::Bf16))?;
        if cpu.model_hash != mlx.model_hash {
            return Err(Error::invalid(
                "mlx vs cpu logits",
                format!(
                    "MLX holds model {}, the CPU reference {}: refusing to compare",
                    mlx.model_hash, cpu.model_hash
                ),
            ));
        }
        let c = cpu.teacher_forced(tokens, AttnPath::Graph, &mut Default::default())?;
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
        let preset = model_name(model);
        let mlx = Engine::load(model, MlxBackend::new()?)?;
        let vars = format!("preset={preset},numerics=bf16");
        let n = seq.len();

        let (verdict, rows) = logits_vs_cpu(&mlx, model, seq)?;
        let name = "mlx_bf16_vs_cpu_bf16_logits_rel_rms";
        push(CheckResult {
            check: "parity-logits".into(),
            case: format!("logits({vars},path=graph,tokens={n})@mlx-vs-cpu"),
            metric: "max row rel RMS judged".into(),
            value: Some(verdict.worst_judged()),
            threshold: format!(
                "{name} = {:e} per row; MoE: up to a routing near-tie",
                crate::verify::tolerances::tol(name)
            ),
            status: if verdict.passes() {
                Status::Pass
            } else {
                Status::Fail
            },
            detail: match verdict {
                RowVerdict::AllWithin { .. } => format!("all {} rows within", rows.len()),
                RowVerdict::RoutingNearTie {
                    row,
                    value,
                    gap,
                    layer,
                    ..
                } => format!(
                    "rows 0..{row} within; row {row} ({value:.3e}) follows a routing near-tie \
                     (gap {gap:.2e}, MoE layer {layer}); later rows not judged"
                ),
                RowVerdict::Outside {
                    row,
                    value,
                    nearest_tie,
                } => format!(
                    "row {row} at {value:.3e}, no routing near-tie explains it (nearest {nearest_tie:?})"
                ),
            },
        });

        let op = op_parity_on(
            &mlx,
            model,
            &format!("qkv({vars},tokens={n})@mlx"),
            seq,
            "fused_vs_graph_rms",
        )?;
        push(parity_rows(&op, "parity-op"));

        for path in [AttnPath::Graph, AttnPath::Fused] {
            let level = crate::jobs::EnvelopeLevel::Logits;
            let env = crate::jobs::envelope_of(
                &mlx,
                model,
                level,
                path,
                seq,
                MLX_ENVELOPE_RUNS,
                UlpType::Bf16,
            )?;
            push(envelope_row(&env));
        }

        for case in golden_cases().iter().filter(|c| c.preset == preset) {
            let (now, _) = golden_run_on(&mlx, case)?;
            push(golden_row(&now, golden_root, "mlx"));
        }
        Ok(())
    }
}
