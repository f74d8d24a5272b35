//! CUDA's rows of `lockstep verify`: the same procedure as MLX's
//! (`generic::accelerator_rows`) on GPU 0, deterministic mode, op by op.
//! Without the `cuda` feature, or without a usable GPU, `verify_rows`
//! returns the error that says why, which `verify` turns into a skipped row.

use crate::error::Result;
use crate::model::Model;
use crate::verify::summary::CheckResult;

/// Teacher-forced runs per CUDA envelope in `verify`: deterministic mode
/// gave one bitwise result in 100 op-level and 20 greedy runs
/// (docs/cuda.md); five catch a backend that stopped being deterministic.
pub const CUDA_ENVELOPE_RUNS: usize = 5;

/// GPU 0 in deterministic mode, or the error saying why not (no driver
/// library, no GPU): the one place the jobs open a CUDA backend.
#[cfg(feature = "cuda")]
pub fn open() -> Result<crate::backend::cuda::CudaBackend> {
    std::panic::catch_unwind(|| crate::backend::cuda::CudaBackend::new(0)).map_err(|_| {
        crate::error::Error::Backend {
            backend: "cuda",
            problem: "the CUDA driver library could not be loaded".into(),
        }
    })?
}

#[cfg(feature = "cuda")]
pub fn verify_rows(
    model: &Model,
    seq: &[u32],
    golden_root: &std::path::Path,
    push: &mut dyn FnMut(CheckResult),
) -> Result<()> {
    use super::generic::{accelerator_rows, cpu_reference_logits, LogitsVsCpu};
    use crate::backend::AttnPath;
    use crate::engine::Engine;
    use crate::verify::metrics::diff;
    use crate::verify::rows::judge_rows;

    let cuda = Engine::load(model, open()?)?;
    let tolerance = "cuda_vs_cpu_bf16_logits_rel_rms";
    let c = cpu_reference_logits(model, &cuda.model_hash, seq, "cuda vs cpu logits")?;
    let g = cuda.teacher_forced(seq, AttnPath::Graph, &mut Default::default())?;
    let rows: Vec<f64> = g.iter().zip(&c).map(|(g, c)| diff(g, c).rel_rms).collect();
    // The CUDA backend keeps no routing record: every row is judged.
    let verdict = judge_rows(&rows, &vec![None; rows.len()], tolerance);
    let logits = LogitsVsCpu {
        tolerance,
        verdict,
        rows: rows.len(),
    };
    accelerator_rows(
        "cuda",
        &cuda,
        model,
        seq,
        logits,
        CUDA_ENVELOPE_RUNS,
        golden_root,
        push,
    )
}

#[cfg(not(feature = "cuda"))]
pub fn verify_rows(
    _model: &Model,
    _seq: &[u32],
    _golden_root: &std::path::Path,
    _push: &mut dyn FnMut(CheckResult),
) -> Result<()> {
    Err(crate::error::Error::BackendNotCompiled { backend: "cuda" })
}
