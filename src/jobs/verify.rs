//! The main job: on every default model, the CPU reference's parity at op
//! and layer level, the transformers oracle, envelopes, containment and
//! goldens, then each accelerator's rows (or one row saying why it could
//! not run here). Each model's engines are loaded once (`Fixture`) and
//! shared by its rows; a row the filter does not match is not run.

use super::accelerator::{accelerator_rows, Cuda, Mlx, MlxGpu, DECODE_STEPS};
use super::decode::{decode_case, decode_vs_teacher_forced};
use super::envelope::{containment_case, containment_on, envelope_case};
use super::golden::{against_committed, golden_cases, golden_run_on};
use super::oracle::{compare_on, embedded_references, oracle_case};
use super::parity::{layer_parity_on, layers_case, op_case, op_parity_on, op_tolerance};
use super::{envelope_of, Accelerator, EnvelopeLevel, Fixture, DEFAULT_PRESETS};
use crate::backend::{AttnPath, BackendKind};
use crate::error::Result;
use crate::ident::Numerics;
use crate::verify::case::{Case, Filter, Op};
use crate::verify::checks::{
    batch_row, containment_row, decode_row, envelope_row, golden_row, layout_row, oracle_row,
    parity_row, skipped_backend_row,
};
use crate::verify::decode::DecodeRule;
use crate::verify::envelope::Envelope;
use crate::verify::summary::{Check, CheckResult};
use crate::verify::tolerances::Tol;
use std::path::Path;

/// Runs per CPU envelope in `verify`.
pub const ENVELOPE_RUNS: usize = 20;

/// The full result behind a row, kept for `verify --report` (plots and
/// per-row reports) when asked for.
#[derive(Debug, Clone)]
pub enum Artifact {
    Parity(Box<crate::verify::parity::ParityReport>),
    Envelope(Box<Envelope>),
}

/// A run's rows, how many the filter left out, and the kept artifacts by
/// row index.
pub type VerifyRun = (Vec<CheckResult>, usize, Vec<(usize, Artifact)>);

/// Collects the rows of one run: skips those the filter does not match,
/// hands each result to the caller as it lands.
pub struct Rows<'a> {
    filter: &'a Filter,
    on_check: &'a mut dyn FnMut(&CheckResult),
    out: Vec<CheckResult>,
    /// Rows the filter left out (of the backends it let open).
    filtered_out: usize,
    /// (row index, artifact) when kept.
    kept: Option<Vec<(usize, Artifact)>>,
}

impl<'a> Rows<'a> {
    pub fn new(filter: &'a Filter, on_check: &'a mut dyn FnMut(&CheckResult)) -> Self {
        Rows {
            filter,
            on_check,
            out: Vec::new(),
            filtered_out: 0,
            kept: None,
        }
    }

    /// Keeps the artifacts of the rows that have them (`run_kept`).
    pub fn keeping_artifacts(mut self) -> Self {
        self.kept = Some(Vec::new());
        self
    }

    pub fn wants(&self, case: &Case) -> bool {
        self.filter.matches(case)
    }

    /// Counts a row left out without asking (its case was known not wanted).
    pub fn leave_out(&mut self) {
        self.filtered_out += 1;
    }

    /// Runs `job` for `case` if the filter matches it, and keeps its row.
    pub fn run(&mut self, case: Case, job: impl FnOnce(Case) -> Result<CheckResult>) -> Result<()> {
        if !self.wants(&case) {
            self.leave_out();
            return Ok(());
        }
        let r = job(case)?;
        (self.on_check)(&r);
        self.out.push(r);
        Ok(())
    }

    /// `run` for a row whose full result is worth keeping for reports.
    pub fn run_kept(
        &mut self,
        case: Case,
        job: impl FnOnce(Case) -> Result<(CheckResult, Artifact)>,
    ) -> Result<()> {
        if !self.wants(&case) {
            self.leave_out();
            return Ok(());
        }
        let (r, a) = job(case)?;
        (self.on_check)(&r);
        if let Some(k) = self.kept.as_mut() {
            k.push((self.out.len(), a));
        }
        self.out.push(r);
        Ok(())
    }

    pub fn finish(self) -> Vec<CheckResult> {
        self.out
    }
}

/// The CPU reference's rows for one fixture.
fn cpu_rows(fx: &Fixture, golden_root: &Path, rows: &mut Rows) -> Result<()> {
    let seq = &fx.seq;
    for numerics in Numerics::ALL {
        let e = fx.cpu(numerics);
        rows.run_kept(op_case(e, seq.len()), |_| {
            let op = op_parity_on(e, &fx.truth, seq, op_tolerance(numerics))?;
            Ok((
                parity_row(&op, Check::ParityOp),
                Artifact::Parity(Box::new(op)),
            ))
        })?;
        rows.run_kept(layers_case(e, seq.len()), |_| {
            let strict = (numerics == Numerics::F64).then_some(Tol::FusedVsGraphF64Rms);
            let run = layer_parity_on(e, &fx.truth, seq, strict)?;
            Ok((
                parity_row(&run, Check::ParityLayers),
                Artifact::Parity(Box::new(run)),
            ))
        })?;
    }
    for position in super::parity::DECODE_POSITIONS {
        rows.run_kept(super::parity::decode_op_case(&fx.bf16, position), |_| {
            let op = super::parity::decode_op_parity_on(
                &fx.bf16,
                &fx.truth,
                seq,
                position,
                op_tolerance(Numerics::Bf16),
            )?;
            Ok((
                parity_row(&op, Check::ParityOp),
                Artifact::Parity(Box::new(op)),
            ))
        })?;
    }
    rows.run(super::layout::layout_case(&fx.bf16), |_| {
        Ok(layout_row(&super::layout::fused_layout(&fx.bf16, seq)?))
    })?;
    for path in AttnPath::ALL {
        rows.run(super::batch::batch_case(&fx.bf16, path), |case| {
            let plan = super::batch::verify_plan(fx.bf16.config.vocab_size);
            Ok(batch_row(
                case,
                &super::batch::batch_invariance(&fx.bf16, &plan, path)?,
            ))
        })?;
    }
    for numerics in Numerics::ALL {
        let cases: Vec<_> = super::tp::VERIFY_CONFIGS
            .into_iter()
            .map(|(ranks, order)| {
                let sim = crate::backend::cpu::tp::TpSim::new(ranks, order);
                let case = super::tp::tp_case(fx.name(), numerics, AttnPath::Graph, seq.len(), sim);
                (sim, case)
            })
            .collect();
        if !cases.iter().any(|(_, c)| rows.wants(c)) {
            cases.iter().for_each(|_| rows.leave_out());
            continue;
        }
        // One device's logits, once for every row of this numerics.
        let one = super::tp::OneDevice::of(fx, numerics, AttnPath::Graph)?;
        for (sim, case) in cases {
            rows.run(case, |case| {
                let r = super::tp::fixture_row(fx, sim, AttnPath::Graph, &one)?;
                Ok(crate::verify::checks::tp_row(case, &r))
            })?;
        }
    }
    // Decode steps of the bf16 reference: the same bits as its teacher-forced
    // rows (f64 runs keep f32 step logits, so are not compared bitwise).
    for path in AttnPath::ALL {
        rows.run(decode_case(&fx.bf16, path, DECODE_STEPS), |_| {
            let r = decode_vs_teacher_forced(
                &fx.bf16,
                &super::DEFAULT_PROMPT,
                DECODE_STEPS,
                path,
                DecodeRule::Bitwise,
            )?;
            Ok(decode_row(&r))
        })?;
    }
    for r in embedded_references(fx.name())? {
        rows.run(oracle_case(&r), |case| {
            Ok(oracle_row(
                case,
                &compare_on(fx.cpu(r.dtype.numerics()), &r)?,
            ))
        })?;
    }
    // The graph envelope is also what containment is judged against.
    let containment = containment_case(&fx.bf16, seq.len());
    let mut graph_env: Option<Envelope> = None;
    for path in AttnPath::ALL {
        let case = envelope_case(&fx.bf16, EnvelopeLevel::Logits, path, seq.len());
        let needed = path == AttnPath::Graph && rows.wants(&containment);
        if !rows.wants(&case) && !needed {
            rows.leave_out();
            continue;
        }
        let env = envelope_of(&fx.bf16, EnvelopeLevel::Logits, path, seq, ENVELOPE_RUNS)?;
        rows.run_kept(case, |_| {
            Ok((
                envelope_row(&env),
                Artifact::Envelope(Box::new(env.clone())),
            ))
        })?;
        if path == AttnPath::Graph {
            graph_env = Some(env);
        }
    }
    rows.run(containment, |case| {
        let env = graph_env
            .as_ref()
            .expect("measured when containment is wanted");
        let c = containment_on(&fx.bf16, &fx.truth, seq, env)?;
        let mut row = containment_row(case, &c);
        if !c.contained {
            let b = super::divergence::bisect_pair(
                (&fx.bf16, AttnPath::Fused),
                (&fx.bf16, AttnPath::Graph),
                &fx.truth,
                seq,
            )?;
            row.detail += &format!("; bisection (a = fused, b = graph): {}", b.verdict());
        }
        Ok(row)
    })?;
    for g in golden_cases(BackendKind::Cpu)
        .iter()
        .filter(|c| c.preset == fx.name())
    {
        rows.run(g.case(), |case| {
            let (now, fp) = golden_run_on(fx.cpu(g.numerics), g)?;
            Ok(golden_row(case, &against_committed(golden_root, &now, &fp)))
        })?;
    }
    Ok(())
}

/// An accelerator's rows for one fixture when this build has it and the
/// machine can run it, else one skipped row saying why (a failure under
/// its REQUIRE variable).
fn rows_of<A: Accelerator>(fx: &Fixture, golden_root: &Path, rows: &mut Rows) -> Result<()> {
    // Nothing the filter lets through can be this backend's: leave it closed.
    if !rows.filter.wants_backend(A::KIND) {
        return Ok(());
    }
    match A::open() {
        Ok(b) => accelerator_rows::<A>(&super::load(&fx.model, b)?, fx, golden_root, rows),
        Err(why) if why.is_unavailable() => {
            let case = Case::new(Op::Qkv, A::KIND).preset(fx.name());
            let required = std::env::var(A::NEED.env_var()).ok();
            let reason = why.to_string();
            rows.run(case, |case| {
                Ok(skipped_backend_row(
                    A::NEED,
                    required.as_deref(),
                    case,
                    &reason,
                ))
            })
        }
        Err(e) => Err(e),
    }
}

/// Every row of `verify` on the default models, goldens read from
/// `golden_root/golden`; `on_check` sees each result as it lands. Returns
/// the rows and how many the filter left out.
pub fn verify(
    golden_root: &Path,
    filter: &Filter,
    on_check: &mut dyn FnMut(&CheckResult),
) -> Result<(Vec<CheckResult>, usize)> {
    let (results, filtered, _) = verify_keeping(golden_root, filter, on_check, false)?;
    Ok((results, filtered))
}

/// `verify`, and with `keep` the full parity reports and envelopes behind
/// the rows that have them, by row index (`verify --report`).
pub fn verify_keeping(
    golden_root: &Path,
    filter: &Filter,
    on_check: &mut dyn FnMut(&CheckResult),
    keep: bool,
) -> Result<VerifyRun> {
    let mut rows = Rows::new(filter, on_check);
    if keep {
        rows = rows.keeping_artifacts();
    }
    for preset in DEFAULT_PRESETS {
        let fx = Fixture::preset(preset)?;
        cpu_rows(&fx, golden_root, &mut rows)?;
        rows_of::<Mlx>(&fx, golden_root, &mut rows)?;
        rows_of::<MlxGpu>(&fx, golden_root, &mut rows)?;
        rows_of::<Cuda>(&fx, golden_root, &mut rows)?;
    }
    let filtered = rows.filtered_out;
    let kept = rows.kept.take().unwrap_or_default();
    Ok((rows.finish(), filtered, kept))
}
