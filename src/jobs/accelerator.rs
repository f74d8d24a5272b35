//! The accelerators `verify` runs beside the CPU reference (MLX, CUDA): how
//! each is opened, what it is judged by, and the rows every accelerator
//! adds, by one procedure written once over `Backend`.
//!
//! What is backend-specific is only what the type declares here; a routing
//! record for the MoE row rule comes through `Backend::take_routing_log`
//! (empty where a backend keeps none, so every row is judged).

use super::golden::{against_committed, golden_cases, golden_run_on};
use super::parity::op_parity_on;
use super::verify::{Artifact, Rows};
use super::{envelope_of, EnvelopeLevel, Fixture};
use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::{CudaBackend, CudaOptions};
use crate::backend::mlx::MlxBackend;
use crate::backend::{AttnPath, Backend, BackendKind, RowRouting};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::ident::Numerics;
use crate::skip::Need;
use crate::verify::case::{Case, Key, Op};
use crate::verify::checks::{
    decode_row, envelope_row, golden_row, layout_row, logits_row, parity_row, path_containment_row,
};
use crate::verify::decode::DecodeRule;
use crate::verify::metrics::diff;
use crate::verify::rows::{judge_rows, RowVerdict};
use crate::verify::summary::Check;
use crate::verify::tolerances::Tol;

/// An accelerator that `verify` and the shared test suite run against the
/// CPU reference: a backend on one device, with what it is judged by. The
/// implementors are marker types because one backend type can stand for two
/// of them (MLX on its CPU and on its GPU device).
pub trait Accelerator {
    type Backend: Backend;
    /// Its results' backend identity (`Backend::kind` of what `open` gives).
    const KIND: BackendKind;
    /// What a machine needs to run it (for loud skips).
    const NEED: Need;
    /// Teacher-forced runs per logits envelope in `verify`.
    const ENVELOPE_RUNS: usize;
    /// Its bf16 logits against the CPU reference's, per row.
    const LOGITS_TOLERANCE: Tol;
    /// How its decode steps must relate to its own teacher-forced rows.
    const DECODE_RULE: DecodeRule;
    /// The default device in the default settings, or why there is none
    /// here (not compiled in, no driver, no device).
    fn open() -> Result<Self::Backend>;
    /// Whether its default settings promise a sequence the same bits in any
    /// batch as alone (judged bitwise by `verify`'s batch rows).
    const BATCH_INVARIANT: bool;
    /// The name of a mode that does not promise run-to-run determinism,
    /// where the backend has one: the mode whose graph path has a real
    /// envelope to judge fused by.
    const NONDETERMINISTIC_MODE: Option<&'static str> = None;
    /// The same device in that mode.
    fn open_nondeterministic() -> Result<Self::Backend> {
        Err(Error::invalid(
            Self::KIND.name(),
            "has no nondeterministic mode",
        ))
    }
}

/// MLX on its CPU device.
pub struct Mlx;

/// MLX on its GPU device (a CUDA build of libmlx on NVIDIA cards).
pub struct MlxGpu;

/// lockstep's own CUDA backend on GPU 0.
pub struct Cuda;

impl Accelerator for Mlx {
    type Backend = MlxBackend;
    const KIND: BackendKind = BackendKind::Mlx;
    const NEED: Need = Need::Mlx;
    /// MLX on its CPU device gave one bitwise result in 20 runs
    /// (docs/mlx.md, the MLX tests); five keep `verify` quick and still
    /// catch a backend that is not stable from run to run, which shows
    /// within two runs.
    const ENVELOPE_RUNS: usize = 5;
    const LOGITS_TOLERANCE: Tol = Tol::MlxBf16VsCpuBf16LogitsRelRms;
    /// Measured bitwise on tiny and tiny-moe, both paths (x86 machine).
    const DECODE_RULE: DecodeRule = DecodeRule::Bitwise;
    /// Measured bitwise at batches of 1 to 20 on tiny and tiny-moe, both
    /// paths (docs/batching.md).
    const BATCH_INVARIANT: bool = true;

    fn open() -> Result<MlxBackend> {
        MlxBackend::new()
    }
}

impl Accelerator for MlxGpu {
    type Backend = MlxBackend;
    const KIND: BackendKind = BackendKind::MlxGpu;
    const NEED: Need = Need::MlxGpu;
    /// As many as for MLX's CPU device; whether MLX's GPU is bitwise
    /// stable is what the envelope rows find out.
    const ENVELOPE_RUNS: usize = 5;
    const LOGITS_TOLERANCE: Tol = Tol::MlxGpuBf16VsCpuBf16LogitsRelRms;
    /// Not yet measured on the GPU: the backend's own logits bound.
    const DECODE_RULE: DecodeRule = DecodeRule::RelRms {
        tolerance: Tol::MlxGpuBf16VsCpuBf16LogitsRelRms,
    };

    /// MLX promises no batch invariance and its GPU has not run the check:
    /// no batch rows until it has.
    const BATCH_INVARIANT: bool = false;

    fn open() -> Result<MlxBackend> {
        MlxBackend::gpu()
    }
}

impl Accelerator for Cuda {
    type Backend = CudaBackend;
    const KIND: BackendKind = BackendKind::Cuda;
    const NEED: Need = Need::Gpu;
    /// Deterministic mode gave one bitwise result in 100 op-level and 20
    /// greedy runs (docs/cuda.md); five catch a backend that stopped being
    /// deterministic.
    const ENVELOPE_RUNS: usize = 5;
    const LOGITS_TOLERANCE: Tol = Tol::CudaVsCpuBf16LogitsRelRms;
    /// Not yet measured as a verify row (the CUDA tests check decode steps
    /// bitwise against teacher-forced passes of up to 8 rows; longer
    /// prefills use cuBLAS): the backend's own logits bound.
    const DECODE_RULE: DecodeRule = DecodeRule::RelRms {
        tolerance: Tol::CudaVsCpuBf16LogitsRelRms,
    };

    /// Deterministic mode: measured bitwise at batches of 1 to 20 on tiny
    /// and tiny-moe, both paths, on an H200 (docs/batching.md).
    const BATCH_INVARIANT: bool = true;

    /// GPU 0 in deterministic mode.
    fn open() -> Result<CudaBackend> {
        open_cuda(CudaOptions::default())
    }

    const NONDETERMINISTIC_MODE: Option<&'static str> =
        Some(crate::backend::cuda::ReductionMode::Fast.name());

    /// GPU 0 in fast mode (atomics and split reductions).
    fn open_nondeterministic() -> Result<CudaBackend> {
        open_cuda(CudaOptions {
            mode: crate::backend::cuda::ReductionMode::Fast,
            ..CudaOptions::default()
        })
    }
}

/// GPU 0 with `options`, or the error saying why not; a panic while
/// loading the driver libraries becomes that error too.
pub fn open_cuda(options: CudaOptions) -> Result<CudaBackend> {
    std::panic::catch_unwind(|| CudaBackend::with_options(0, options)).map_err(|_| {
        Error::Unavailable {
            backend: BackendKind::Cuda,
            problem: "the CUDA driver library could not be loaded".into(),
        }
    })?
}

/// For each row, the closest routing decision to a tie over the MoE calls
/// of one forward pass: (relative gap, call index = MoE layer).
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

/// How a backend's logits compared with the CPU reference, row by row.
pub struct LogitsVsCpu {
    pub verdict: RowVerdict,
    /// Each row's relative RMS against the reference.
    pub rows: Vec<f64>,
    /// Each row's nearest routing tie in the backend's own record.
    pub ties: Vec<Option<(f32, usize)>>,
}

/// `e` against the CPU reference `cpu` (bf16), both on `path`,
/// teacher-forced on `tokens`, judged row by row by `tolerance` with `e`'s
/// own routing record for MoE models. Refused when the two hold different
/// models.
pub fn logits_vs_cpu<B: Backend>(
    e: &Engine<B>,
    cpu: &Engine<CpuBackend>,
    tokens: &[u32],
    path: AttnPath,
    tolerance: Tol,
) -> Result<LogitsVsCpu> {
    if cpu.model_hash != e.model_hash {
        return Err(Error::invalid(
            format!("{} vs cpu logits", e.backend.kind()),
            format!(
                "the backend holds model {}, the CPU reference {}: refusing to compare",
                e.model_hash, cpu.model_hash
            ),
        ));
    }
    let c = cpu.teacher_forced(tokens, path, &mut Default::default())?;
    e.backend.record_routing(true);
    let m = e.teacher_forced(tokens, path, &mut Default::default());
    let log = e.backend.take_routing_log();
    e.backend.record_routing(false);
    let rows: Vec<f64> = m?.iter().zip(&c).map(|(m, c)| diff(m, c).rel_rms).collect();
    let ties = nearest_ties(&log, rows.len());
    Ok(LogitsVsCpu {
        verdict: judge_rows(&rows, &ties, tolerance),
        rows,
        ties,
    })
}

/// How a backend's greedy generation compared with the CPU reference's.
#[derive(Debug, Clone, PartialEq)]
pub enum GreedyVerdict {
    /// The same tokens at every step.
    Agree { steps: usize },
    /// The tokens part at `step`, where the smaller top-1/top-2 margin of
    /// the two runs is below `near_tie_margin_bf16`.
    NearTie { step: usize, margin: f32 },
    /// The tokens part at a confident step, but replaying the common context
    /// teacher-forced shows an MoE routing near-tie at `row` first.
    RoutingNearTie {
        step: usize,
        row: usize,
        gap: f32,
        layer: usize,
    },
    /// The tokens part at a confident step that nothing explains.
    Regression {
        step: usize,
        margin: f32,
        /// The teacher-forced replay's verdict on the common context.
        replay: RowVerdict,
    },
}

impl GreedyVerdict {
    pub fn passes(&self) -> bool {
        !matches!(self, GreedyVerdict::Regression { .. })
    }
}

/// `steps` greedy tokens from `prompt` on `e` and on the CPU reference
/// (bf16), both on `path`. Where they part at a confident step, the common
/// context is replayed teacher-forced on the graph paths and judged by the
/// row rule (`tolerance`), which names an upstream routing near-tie if
/// there is one. Returns the verdict and both runs' tokens (ours, cpu).
pub fn greedy_vs_cpu<B: Backend>(
    e: &Engine<B>,
    cpu: &Engine<CpuBackend>,
    prompt: &[u32],
    steps: usize,
    path: AttnPath,
    tolerance: Tol,
) -> Result<(GreedyVerdict, Vec<u32>, Vec<u32>)> {
    let opts = crate::engine::generate::GenerateOptions {
        max_tokens: steps,
        path,
        ..Default::default()
    };
    let ours = e.generate(prompt, &opts, &mut |_| {})?;
    let theirs = cpu.generate(prompt, &opts, &mut |_| {})?;
    if ours.fingerprint.model_hash != theirs.fingerprint.model_hash {
        return Err(Error::invalid(
            format!("{} vs cpu greedy", e.backend.kind()),
            "the two engines hold different models: refusing to compare",
        ));
    }
    let Some(step) = ours
        .tokens
        .iter()
        .zip(&theirs.tokens)
        .position(|(a, b)| a != b)
    else {
        let steps = ours.tokens.len();
        return Ok((GreedyVerdict::Agree { steps }, ours.tokens, theirs.tokens));
    };
    let margin = ours.steps[step].margin.min(theirs.steps[step].margin);
    let verdict = if f64::from(margin) < crate::verify::tolerances::tol(Tol::NearTieMarginBf16) {
        GreedyVerdict::NearTie { step, margin }
    } else {
        let context = [prompt, &theirs.tokens[..step]].concat();
        let replay = logits_vs_cpu(e, cpu, &context, AttnPath::Graph, tolerance)?.verdict;
        match replay {
            RowVerdict::RoutingNearTie {
                row, gap, layer, ..
            } => GreedyVerdict::RoutingNearTie {
                step,
                row,
                gap,
                layer,
            },
            replay => GreedyVerdict::Regression {
                step,
                margin,
                replay,
            },
        }
    };
    Ok((verdict, ours.tokens, theirs.tokens))
}

/// The case of an accelerator's logits-vs-CPU row.
pub fn logits_case<B: Backend>(e: &Engine<B>, tokens: usize) -> Case {
    Case::new(Op::Logits, e.backend.kind())
        .preset(&e.model_name)
        .numerics(e.backend.numerics())
        .path(AttnPath::Graph)
        .tokens(tokens)
        .with(Key::Vs, BackendKind::Cpu)
}

/// Greedy steps of a decode row in `verify`.
pub const DECODE_STEPS: usize = 24;

/// The rows every accelerator adds to `verify` for one fixture, on `e`:
/// its logits against the CPU reference, fused vs graph at op level against
/// the contract, a logits envelope per path, and its goldens of the preset.
pub fn accelerator_rows<A: Accelerator>(
    e: &Engine<A::Backend>,
    fx: &Fixture,
    golden_root: &std::path::Path,
    rows: &mut Rows,
) -> Result<()> {
    let seq = &fx.seq;
    rows.run(logits_case(e, seq.len()), |case| {
        let l = logits_vs_cpu(e, &fx.bf16, seq, AttnPath::Graph, A::LOGITS_TOLERANCE)?;
        let mut row = logits_row(case, A::LOGITS_TOLERANCE, &l.verdict, l.rows.len());
        if let RowVerdict::Outside { row: r, .. } = l.verdict {
            // Where the two runs part, up to the row that failed.
            let b = super::divergence::bisect_pair(
                (e, AttnPath::Graph),
                (&fx.bf16, AttnPath::Graph),
                &fx.truth,
                &seq[..=r.min(seq.len() - 1)],
            )?;
            row.detail += &format!(
                "; bisection at row {r} (a = {}, b = cpu): {}",
                A::KIND,
                b.verdict()
            );
        }
        Ok(row)
    })?;
    for path in AttnPath::ALL {
        rows.run(super::decode::decode_case(e, path, DECODE_STEPS), |_| {
            let r = super::decode::decode_vs_teacher_forced(
                e,
                &super::DEFAULT_PROMPT,
                DECODE_STEPS,
                path,
                A::DECODE_RULE,
            )?;
            Ok(decode_row(&r))
        })?;
    }
    rows.run_kept(super::parity::op_case(e, seq.len()), |_| {
        let op = op_parity_on(e, &fx.truth, seq, Tol::FusedVsGraphRms)?;
        Ok((
            parity_row(&op, Check::ParityOp),
            Artifact::Parity(Box::new(op)),
        ))
    })?;
    for position in super::parity::DECODE_POSITIONS {
        rows.run_kept(super::parity::decode_op_case(e, position), |_| {
            let op = super::parity::decode_op_parity_on(
                e,
                &fx.truth,
                seq,
                position,
                Tol::FusedVsGraphRms,
            )?;
            Ok((
                parity_row(&op, Check::ParityOp),
                Artifact::Parity(Box::new(op)),
            ))
        })?;
    }
    rows.run(super::layout::layout_case(e), |_| {
        Ok(layout_row(&super::layout::fused_layout(e, seq)?))
    })?;
    // Batch invariance where the backend promises it (A::BATCH_INVARIANT).
    for path in AttnPath::ALL.into_iter().filter(|_| A::BATCH_INVARIANT) {
        rows.run(super::batch::batch_case(e, path), |case| {
            let plan = super::batch::verify_plan(e.config.vocab_size);
            let r = super::batch::batch_invariance(e, &plan, path)?;
            Ok(crate::verify::checks::batch_row(case, &r))
        })?;
    }
    for path in AttnPath::ALL {
        let case = super::envelope::envelope_case(e, EnvelopeLevel::Logits, path, seq.len());
        rows.run_kept(case, |_| {
            let env = envelope_of(e, EnvelopeLevel::Logits, path, seq, A::ENVELOPE_RUNS)?;
            Ok((envelope_row(&env), Artifact::Envelope(Box::new(env))))
        })?;
    }
    for g in golden_cases(A::KIND)
        .iter()
        .filter(|c| c.preset == fx.name())
    {
        rows.run(g.case(), |case| {
            let (now, fp) = golden_run_on(e, g)?;
            Ok(golden_row(case, &against_committed(golden_root, &now, &fp)))
        })?;
    }
    if let Some(mode) = A::NONDETERMINISTIC_MODE {
        let cases = containment_cases(A::KIND, fx, mode);
        if cases.iter().any(|c| rows.wants(c)) {
            let e = super::load(&fx.model, A::open_nondeterministic()?)?;
            containment_rows(&e, cases, fx, rows)?;
        } else {
            rows.leave_out();
            rows.leave_out();
        }
    }
    Ok(())
}

/// Op-level q/k/v runs per path in a containment row: the N >= 100.
pub const CONTAINMENT_OP_RUNS: usize = 100;
/// Greedy runs per path and their length.
pub const CONTAINMENT_GREEDY_RUNS: usize = 20;
pub const CONTAINMENT_GREEDY_STEPS: usize = 64;

/// The containment rows' cases in `mode`: op level and greedy runs.
fn containment_cases(kind: BackendKind, fx: &Fixture, mode: &str) -> [Case; 2] {
    let base = |op| {
        Case::new(op, kind)
            .preset(fx.name())
            .numerics(Numerics::Bf16)
            .with(Key::Mode, mode)
    };
    [
        base(Op::Qkv).tokens(fx.seq.len()),
        base(Op::Greedy).with(Key::Steps, CONTAINMENT_GREEDY_STEPS),
    ]
}

/// Fused against graph's envelope on `e` (a nondeterministic mode): op
/// level (truth decides where the graph path proves deterministic) and
/// greedy runs.
fn containment_rows<B: Backend>(
    e: &Engine<B>,
    [op, greedy]: [Case; 2],
    fx: &Fixture,
    rows: &mut Rows,
) -> Result<()> {
    use super::envelope::containment_of;
    rows.run(op, |case| {
        let c = containment_of(
            e,
            Some(&fx.truth),
            EnvelopeLevel::Op,
            &fx.seq,
            CONTAINMENT_OP_RUNS,
        )?;
        Ok(path_containment_row(case, &c))
    })?;
    rows.run(greedy, |case| {
        let c = containment_of(
            e,
            None,
            EnvelopeLevel::Greedy {
                steps: CONTAINMENT_GREEDY_STEPS,
            },
            &super::DEFAULT_PROMPT,
            CONTAINMENT_GREEDY_RUNS,
        )?;
        Ok(path_containment_row(case, &c))
    })
}
