//! Jobs that drive the engine to produce recorded runs and hand them to
//! `verify`: the glue the CLI and the tests share. Verification itself never
//! touches a backend.

use crate::backend::cpu::{CpuBackend, Numerics};
use crate::backend::AttnPath;
use crate::engine::generate::GenerateOptions;
use crate::engine::{Capture, Engine};
use crate::error::Result;
use crate::model::Model;
use crate::progress::Progress;
use crate::skip::{decide, Need};
use crate::verify::divergence::{
    bisect, first_divergence, near_tie_threshold, Bisection, Divergence, LayerCapture,
};
use crate::verify::envelope::{containment, envelope, Containment, Envelope, UlpType};
use crate::verify::golden::{self, golden_path, GoldenBody, GoldenOutcome};
use crate::verify::metrics::diff;
use crate::verify::parity::{op_parity, run_parity, ParityReport};
use crate::verify::reference::{judge, Reference, ReferenceReport};
use crate::verify::summary::{CheckResult, Status};

pub mod cuda;
pub mod generic;
pub mod mlx;

/// Loads `model` on the CPU reference with a progress bar.
pub fn load_cpu(model: &Model, numerics: Numerics) -> Result<Engine<CpuBackend>> {
    let mut p = Progress::new("loading", model.expected_tensors().len());
    Engine::load_with_progress(model, CpuBackend::new(numerics), &mut |d, _| p.set(d))
}

/// The CPU arithmetic a transformers reference is compared with: f64 truth
/// for float32 references, the bf16-faithful mode for bfloat16 ones.
pub fn numerics_for(reference: &Reference) -> Numerics {
    if reference.dtype == "float32" {
        Numerics::F64
    } else {
        Numerics::Bf16
    }
}

/// Runs the CPU reference teacher-forced on the reference's tokens and
/// greedily from its prompt, and judges both against the reference.
pub fn compare_with_reference(reference: &Reference, model: &Model) -> Result<ReferenceReport> {
    let engine = load_cpu(model, numerics_for(reference))?;
    let logits = engine.teacher_forced(
        &reference.teacher_tokens(),
        AttnPath::Graph,
        &mut Default::default(),
    )?;
    let opts = GenerateOptions {
        max_tokens: reference.tokens.len(),
        ..Default::default()
    };
    let mut p = Progress::new("greedy", reference.tokens.len());
    let ours = engine.generate(&reference.prompt, &opts, &mut |i| p.set(i))?;
    judge(reference, &logits[reference.prompt.len() - 1..], &ours)
}

/// Fused-vs-graph parity on the CPU reference: op level (contract) and
/// layer/logits level (truth-relative in bf16, strict in f64), with f64
/// truth from a separate, fault-free f64 engine on the same inputs.
pub fn cpu_parity(
    model: &Model,
    numerics: Numerics,
    faults: crate::backend::cpu::Faults,
    tokens: &[u32],
) -> Result<(ParityReport, ParityReport)> {
    let engine = Engine::load(model, CpuBackend::with_faults(numerics, faults))?;
    let truth = Engine::load(model, CpuBackend::new(Numerics::F64))?;
    let name = model
        .synth()
        .map_or(model.origin.clone(), |s| s.preset.clone());
    let vars = format!(
        "preset={name},numerics={},tokens={}",
        numerics.name(),
        tokens.len()
    );

    let rec = engine.record_attention_inputs(tokens, &[AttnPath::Graph, AttnPath::Fused])?;
    let positions: Vec<usize> = (0..tokens.len()).collect();
    let truth_ops = rec
        .iter()
        .map(|l| truth.attention_inputs_from_host(l.layer, &l.input, &positions, AttnPath::Graph))
        .collect::<Result<Vec<_>>>()?;
    let op_tol = match numerics {
        Numerics::Bf16 => "fused_vs_graph_rms",
        Numerics::F64 => "fused_vs_graph_f64_rms",
    };
    let mut op = op_parity(&format!("qkv({vars})@cpu"), &rec, Some(&truth_ops), op_tol);
    let fps = vec![
        engine.fingerprint(AttnPath::Graph),
        engine.fingerprint(AttnPath::Fused),
        truth.fingerprint(AttnPath::Graph),
    ];
    op.fingerprints = fps.clone();

    let levels = |e: &Engine<CpuBackend>, p: AttnPath| -> Result<Vec<Vec<f64>>> {
        let mut c = Capture {
            layers: Some(Vec::new()),
            qkv: None,
        };
        let logits = e.teacher_forced(tokens, p, &mut c)?;
        let mut all = c.layers.expect("requested");
        all.push(logits.concat());
        Ok(all)
    };
    let (g, f, t) = (
        levels(&engine, AttnPath::Graph)?,
        levels(&engine, AttnPath::Fused)?,
        levels(&truth, AttnPath::Graph)?,
    );
    let strict = (numerics == Numerics::F64).then_some("fused_vs_graph_f64_rms");
    let mut run = run_parity(&format!("layers({vars})@cpu"), &f, &g, Some(&t), strict);
    run.fingerprints = fps;
    Ok((op, run))
}

/// The prompt followed by `extra` greedy tokens of the bf16 graph path: a
/// deterministic sequence reaching positions past the prompt.
pub fn prompt_and_continuation(model: &Model, prompt: &[u32], extra: usize) -> Result<Vec<u32>> {
    let e = Engine::load(model, CpuBackend::new(Numerics::Bf16))?;
    let opts = GenerateOptions {
        max_tokens: extra,
        ..Default::default()
    };
    let run = e.generate(prompt, &opts, &mut |_| {})?;
    Ok([prompt.to_vec(), run.tokens].concat())
}

/// The transformers references built into the binary for the default models,
/// so `lockstep verify` runs anywhere without the repository.
pub const EMBEDDED_REFERENCES: [(&str, &str); 4] = [
    (
        "tiny-float32",
        include_str!("../golden/reference/tiny-float32.json"),
    ),
    (
        "tiny-bfloat16",
        include_str!("../golden/reference/tiny-bfloat16.json"),
    ),
    (
        "tiny-moe-float32",
        include_str!("../golden/reference/tiny-moe-float32.json"),
    ),
    (
        "tiny-moe-bfloat16",
        include_str!("../golden/reference/tiny-moe-bfloat16.json"),
    ),
];

/// The default models `lockstep verify` runs on.
pub const DEFAULT_PRESETS: [&str; 2] = ["tiny", "tiny-moe"];

fn parity_rows(rep: &ParityReport, check: &str) -> CheckResult {
    let (metric, value) = if rep.rule.starts_with("RMS") {
        (
            "max RMS fused-graph".to_string(),
            rep.worst_fused_vs_graph_rms(),
        )
    } else {
        let worst = rep
            .levels
            .iter()
            .flat_map(|l| &l.tensors)
            .filter_map(|t| {
                Some(t.fused_vs_truth?.rms / t.graph_vs_truth?.rms.max(f64::MIN_POSITIVE))
            })
            .fold(0.0, f64::max);
        ("max fused-truth / graph-truth".to_string(), worst)
    };
    CheckResult {
        check: check.into(),
        case: rep.case.clone(),
        metric,
        value: Some(value),
        threshold: rep.rule.clone(),
        status: if rep.pass { Status::Pass } else { Status::Fail },
        detail: rep.first_failure().map_or(String::new(), |(l, t)| {
            format!("first failure: {l} {}", t.tensor)
        }),
    }
}

/// The main job: parity, the external oracle, envelopes and goldens on the
/// default models, on every backend this build has. Goldens are read from
/// `golden_root/golden`. `on_check` sees each result as it lands.
/// Runs per envelope in `verify`.
pub const ENVELOPE_RUNS: usize = 20;

pub fn verify(
    golden_root: &std::path::Path,
    on_check: &mut dyn FnMut(&CheckResult),
) -> Result<Vec<CheckResult>> {
    let mut out = Vec::new();
    let mut push = |r: CheckResult, out: &mut Vec<CheckResult>| {
        on_check(&r);
        out.push(r);
    };
    for preset in DEFAULT_PRESETS {
        let model = Model::open(&format!("synth:{preset}:0"))?;
        let seq = prompt_and_continuation(&model, &DEFAULT_PROMPT, 24)?;
        for numerics in [Numerics::Bf16, Numerics::F64] {
            let (op, run) = cpu_parity(&model, numerics, Default::default(), &seq)?;
            push(parity_rows(&op, "parity-op"), &mut out);
            push(parity_rows(&run, "parity-layers"), &mut out);
        }
        for (name, text) in EMBEDDED_REFERENCES
            .iter()
            .filter(|(n, _)| n.rsplit_once('-').map(|x| x.0) == Some(preset))
        {
            let r: Reference = serde_json::from_str(text).map_err(|e| {
                crate::error::Error::invalid(format!("embedded reference {name}"), e.to_string())
            })?;
            let rep = compare_with_reference(&r, &model)?;
            push(
                CheckResult {
                    check: "oracle".into(),
                    case: format!(
                        "transformers(preset={preset},dtype={})@cpu/{}",
                        r.dtype,
                        numerics_for(&r).name()
                    ),
                    metric: "max rel RMS logits".into(),
                    value: Some(rep.worst_rel_rms),
                    threshold: format!(
                        "{} = {:e}",
                        rep.rel_rms_tolerance.0, rep.rel_rms_tolerance.1
                    ),
                    status: if rep.pass { Status::Pass } else { Status::Fail },
                    detail: match (&rep.first_divergence, rep.divergence_margin) {
                        (Some(d), Some(m)) => {
                            format!("greedy differs at step {} (margin {m:.4})", d.step)
                        }
                        _ => format!("greedy agrees for {} steps", rep.steps.len()),
                    },
                },
                &mut out,
            );
        }
        let mut graph_env = None;
        for path in [AttnPath::Graph, AttnPath::Fused] {
            let env = cpu_envelope(
                &model,
                Numerics::Bf16,
                path,
                Default::default(),
                &seq,
                ENVELOPE_RUNS,
            )?;
            push(envelope_row(&env), &mut out);
            if path == AttnPath::Graph {
                graph_env = Some(env);
            }
        }
        let c = cpu_containment(&model, &seq, &graph_env.expect("graph envelope measured"))?;
        push(
            CheckResult {
                check: "containment".into(),
                case: format!(
                    "logits(preset={preset},numerics=bf16,tokens={})@cpu",
                    seq.len()
                ),
                metric: "RMS fused-graph".into(),
                value: Some(c.distance),
                threshold: match c.truth_errors {
                    Some((f, g)) if c.rule == "truth-relative" => {
                        format!("zero envelope: fused-truth {f:.3e} <= truth_relative_factor x graph-truth {g:.3e}")
                    }
                    _ => format!("graph envelope max RMS {:.3e}", c.envelope_max_rms),
                },
                status: if c.contained {
                    Status::Pass
                } else {
                    Status::Fail
                },
                detail: c.rule.clone(),
            },
            &mut out,
        );
        for case in golden_cases().iter().filter(|c| c.preset == preset) {
            let (now, _) = golden_run(case)?;
            push(golden_row(&now, golden_root, "cpu"), &mut out);
        }
        // Each accelerator's rows when this build has it and the machine
        // can run it, else one skipped row saying why.
        type Rows = fn(&Model, &[u32], &std::path::Path, &mut dyn FnMut(CheckResult)) -> Result<()>;
        let accelerators: [(&str, Rows, Need); 2] = [
            ("mlx", mlx::verify_rows, Need::Mlx),
            ("cuda", cuda::verify_rows, Need::Gpu),
        ];
        for (backend, rows, need) in accelerators {
            let reason = match rows(&model, &seq, golden_root, &mut |r| push(r, &mut out)) {
                Ok(()) => continue,
                Err(e @ crate::error::Error::BackendNotCompiled { .. }) => e.to_string(),
                // No device here (no driver, no GPU): a skip, not a failure.
                Err(
                    e @ crate::error::Error::Backend {
                        backend: "cuda", ..
                    },
                ) if !cuda_device_present() => e.to_string(),
                Err(e) => return Err(e),
            };
            let case = format!("qkv(preset={preset})@{backend}");
            let required = std::env::var(need.env_var()).ok();
            push(
                skipped_backend_row(need, required.as_deref(), &case, &reason),
                &mut out,
            );
        }
    }
    Ok(out)
}

/// The `verify` row of a backend that could not run here (`reason`): a
/// skip, or a failure when `required` (the LOCKSTEP_REQUIRE_GPU /
/// LOCKSTEP_REQUIRE_MLX value) is "1", as for tests.
pub fn skipped_backend_row(
    need: Need,
    required: Option<&str>,
    case: &str,
    reason: &str,
) -> CheckResult {
    let skipped = CheckResult::skipped("parity-op", case, reason);
    match decide(need, required, case, reason) {
        Ok(_) => skipped,
        Err(msg) => CheckResult {
            status: Status::Fail,
            detail: msg,
            ..skipped
        },
    }
}

/// The `verify` row of an envelope: a deterministic backend gives one
/// bitwise result however often it runs.
fn envelope_row(env: &Envelope) -> CheckResult {
    CheckResult {
        check: "envelope".into(),
        case: env.case.clone(),
        metric: format!("bitwise-distinct of {}", env.runs),
        value: Some(env.distinct as f64),
        threshold: "1 (deterministic backend)".into(),
        status: if env.distinct == 1 {
            Status::Pass
        } else {
            Status::Fail
        },
        detail: format!("max pairwise RMS {:.3e}", env.pairwise_rms.max),
    }
}

/// The `verify` row of a fresh golden run `now` of `backend` against the
/// golden under `golden_root`.
fn golden_row(now: &GoldenBody, golden_root: &std::path::Path, backend: &str) -> CheckResult {
    let name = now.name();
    let res = golden::load(&golden_path(golden_root, &name)).and_then(|g| golden::compare(&g, now));
    CheckResult {
        check: "golden".into(),
        case: format!("{name}@{backend}"),
        metric: "first token change".into(),
        value: match &res {
            Ok(GoldenOutcome::NearTie { step, .. } | GoldenOutcome::Regression { step, .. }) => {
                Some(*step as f64)
            }
            _ => None,
        },
        threshold: "none, or at a recorded near-tie".into(),
        status: match &res {
            Ok(o) if o.passes() => Status::Pass,
            _ => Status::Fail,
        },
        detail: match res {
            Ok(o) => format!("{o:?}"),
            Err(e) => e.to_string(),
        },
    }
}

/// Whether GPU 0 can be opened (false without the feature, a driver or a GPU).
fn cuda_device_present() -> bool {
    #[cfg(feature = "cuda")]
    {
        cuda::open().is_ok()
    }
    #[cfg(not(feature = "cuda"))]
    false
}

/// The prompt the default checks start from.
pub const DEFAULT_PROMPT: [u32; 8] = [1, 17, 42, 99, 3, 250, 7, 8];

fn ulp_type(n: Numerics) -> UlpType {
    match n {
        Numerics::Bf16 => UlpType::Bf16,
        Numerics::F64 => UlpType::F32,
    }
}

/// What an envelope is taken over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvelopeLevel {
    /// q, k, v of every layer from the same inputs (one teacher-forced pass).
    Op,
    /// Every row's logits of one teacher-forced pass.
    Logits,
    /// Greedy generations: each step's logits (the top 8 when the vocabulary
    /// is larger than 4096, to keep N runs of long generations in memory).
    Greedy { steps: usize },
}

/// `runs` runs of one input on one engine, and their spread.
pub fn envelope_of<B: crate::backend::Backend>(
    e: &Engine<B>,
    model: &Model,
    level: EnvelopeLevel,
    path: AttnPath,
    tokens: &[u32],
    runs: usize,
    ulp: UlpType,
) -> Result<Envelope> {
    let info = e.backend.device_info();
    let mut p = Progress::new("runs", runs);
    let mut results = Vec::with_capacity(runs);
    let mut greedy_tokens = Vec::with_capacity(runs);
    // Op level holds each layer's input fixed (recorded once), so the spread
    // is the op's own, not that of the layers before it.
    let inputs = match level {
        EnvelopeLevel::Op => e.record_attention_inputs(tokens, &[])?,
        _ => Vec::new(),
    };
    let positions: Vec<usize> = (0..tokens.len()).collect();
    for i in 0..runs {
        let r: Vec<f64> = match level {
            EnvelopeLevel::Op => {
                let mut r = Vec::new();
                for l in &inputs {
                    let qkv = e.attention_inputs_from_host(l.layer, &l.input, &positions, path)?;
                    r.extend(qkv.concat());
                }
                r
            }
            EnvelopeLevel::Logits => e
                .teacher_forced(tokens, path, &mut Default::default())?
                .concat(),
            EnvelopeLevel::Greedy { steps } => {
                let full = e.config.vocab_size <= 4096;
                let opts = GenerateOptions {
                    max_tokens: steps,
                    path,
                    keep_logits: full,
                    top_k: 8,
                    ..Default::default()
                };
                let run = e.generate(tokens, &opts, &mut |_| {})?;
                greedy_tokens.push(run.tokens);
                run.steps
                    .iter()
                    .flat_map(|s| match &s.logits {
                        Some(l) => l.iter().map(|&v| v as f64).collect::<Vec<_>>(),
                        None => s.top.iter().map(|t| t.1 as f64).collect(),
                    })
                    .collect()
            }
        };
        results.push(r);
        p.set(i + 1);
    }
    let (kind, size) = match level {
        EnvelopeLevel::Op => ("qkv", format!("tokens={}", tokens.len())),
        EnvelopeLevel::Logits => ("logits", format!("tokens={}", tokens.len())),
        EnvelopeLevel::Greedy { steps } => ("greedy", format!("steps={steps}")),
    };
    let mode = info
        .details
        .get("reduction_mode")
        .map_or(String::new(), |m| format!("mode={m},"));
    let case = format!(
        "{kind}(preset={},numerics={},path={},{mode}{size})@{}",
        generic::model_name(model),
        info.numerics,
        path.name(),
        info.backend
    );
    // Greedy runs that diverged have logits in other contexts: still the same
    // length, so the spread is measured, and the divergence steps say why.
    let toks = matches!(level, EnvelopeLevel::Greedy { .. }).then_some(greedy_tokens.as_slice());
    let mut env = envelope(&case, &results, toks, ulp);
    env.fingerprint = Some(e.fingerprint(path));
    Ok(env)
}

/// Teacher-forced envelope on the CPU reference: the same `tokens` `runs`
/// times; each result is every row's logits.
pub fn cpu_envelope(
    model: &Model,
    numerics: Numerics,
    path: AttnPath,
    faults: crate::backend::cpu::Faults,
    tokens: &[u32],
    runs: usize,
) -> Result<Envelope> {
    let e = Engine::load(model, CpuBackend::with_faults(numerics, faults))?;
    envelope_of(
        &e,
        model,
        EnvelopeLevel::Logits,
        path,
        tokens,
        runs,
        ulp_type(numerics),
    )
}

pub fn cpu_containment(model: &Model, tokens: &[u32], graph_env: &Envelope) -> Result<Containment> {
    let e = Engine::load(model, CpuBackend::new(Numerics::Bf16))?;
    let t = Engine::load(model, CpuBackend::new(Numerics::F64))?;
    let run = |e: &Engine<CpuBackend>, p| {
        e.teacher_forced(tokens, p, &mut Default::default())
            .map(|l| l.concat())
    };
    let (g, f, truth) = (
        run(&e, AttnPath::Graph)?,
        run(&e, AttnPath::Fused)?,
        run(&t, AttnPath::Graph)?,
    );
    let errors = (diff(&f, &truth).rms, diff(&g, &truth).rms);
    Ok(containment(diff(&f, &g).rms, graph_env, Some(errors)))
}

/// Greedy envelope: `runs` generations of `steps` tokens from `prompt`; the
/// results are the per-step logits, and first-divergence steps are recorded.
/// Greedy envelope on the CPU reference: `runs` generations of `steps`.
pub fn cpu_greedy_envelope(
    model: &Model,
    numerics: Numerics,
    path: AttnPath,
    faults: crate::backend::cpu::Faults,
    prompt: &[u32],
    steps: usize,
    runs: usize,
) -> Result<Envelope> {
    let e = Engine::load(model, CpuBackend::with_faults(numerics, faults))?;
    let level = EnvelopeLevel::Greedy { steps };
    envelope_of(&e, model, level, path, prompt, runs, ulp_type(numerics))
}

/// One side of a comparison: a numerics mode, a path and planted faults.
#[derive(Debug, Clone)]
pub struct Side {
    pub numerics: Numerics,
    pub path: AttnPath,
    pub faults: crate::backend::cpu::Faults,
}

/// Everything a divergence investigation found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DivergenceReport {
    pub tokens_a: Vec<u32>,
    pub tokens_b: Vec<u32>,
    pub divergence: Option<Divergence>,
    pub bisection: Option<Bisection>,
}

fn last_row_captures(
    e: &Engine<CpuBackend>,
    tokens: &[u32],
    path: AttnPath,
) -> Result<Vec<LayerCapture>> {
    let mut c = Capture::all();
    e.teacher_forced(tokens, path, &mut c)?;
    let last = |v: &Vec<f64>| {
        let w = v.len() / tokens.len();
        v[v.len() - w..].to_vec()
    };
    let qkv = c.qkv.expect("requested");
    Ok(c.layers
        .expect("requested")
        .iter()
        .zip(qkv)
        .map(|(out, [q, k, v])| LayerCapture {
            qkv: Some([last(&q), last(&k), last(&v)]),
            out: last(out),
        })
        .collect())
}

/// Generates greedily with both sides, finds the first divergent token,
/// classifies it (near-tie threshold from `near_tie_margin_bf16` / `_f32`),
/// and bisects it layer by layer on the common prefix.
pub fn investigate_divergence(
    model: &Model,
    a: &Side,
    b: &Side,
    prompt: &[u32],
    steps: usize,
) -> Result<DivergenceReport> {
    let ea = Engine::load(model, CpuBackend::with_faults(a.numerics, a.faults.clone()))?;
    let eb = Engine::load(model, CpuBackend::with_faults(b.numerics, b.faults.clone()))?;
    let gen = |e: &Engine<CpuBackend>, p: AttnPath| {
        let opts = GenerateOptions {
            max_tokens: steps,
            path: p,
            ..Default::default()
        };
        e.generate(prompt, &opts, &mut |_| {})
    };
    let (ra, rb) = (gen(&ea, a.path)?, gen(&eb, b.path)?);
    let tie = if a.numerics == Numerics::Bf16 || b.numerics == Numerics::Bf16 {
        "near_tie_margin_bf16"
    } else {
        "near_tie_margin_f32"
    };
    let mut div = first_divergence(&ra, &rb, near_tie_threshold(tie, None));
    let bis = match div.as_mut() {
        None => None,
        Some(d) => {
            let prefix: Vec<u32> = prompt.iter().chain(&ra.tokens[..d.step]).copied().collect();
            let b = bisect(
                d.step,
                &last_row_captures(&ea, &prefix, a.path)?,
                &last_row_captures(&eb, &prefix, b.path)?,
            );
            d.refine(&b);
            Some(b)
        }
    };
    Ok(DivergenceReport {
        tokens_a: ra.tokens,
        tokens_b: rb.tokens,
        divergence: div,
        bisection: bis,
    })
}

/// One golden case: (preset, numerics, path) on the CPU reference.
#[derive(Debug, Clone, Copy)]
pub struct GoldenCase {
    pub preset: &'static str,
    pub numerics: Numerics,
    pub path: AttnPath,
}

/// Greedy steps and top-k recorded in each golden.
pub const GOLDEN_STEPS: usize = 32;
pub const GOLDEN_TOP_K: usize = 4;

pub fn golden_cases() -> Vec<GoldenCase> {
    let mut v = Vec::new();
    for preset in DEFAULT_PRESETS {
        for numerics in [Numerics::Bf16, Numerics::F64] {
            for path in [AttnPath::Graph, AttnPath::Fused] {
                v.push(GoldenCase {
                    preset,
                    numerics,
                    path,
                });
            }
        }
    }
    v
}

/// A fresh run of a golden case on the CPU reference, as a golden body,
/// with its fingerprint.
pub fn golden_run(case: &GoldenCase) -> Result<(GoldenBody, crate::engine::record::Fingerprint)> {
    let model = Model::open(&format!("synth:{}:0", case.preset))?;
    generic::golden_run_on(&Engine::load(&model, CpuBackend::new(case.numerics))?, case)
}

/// The golden cases of `backend` (`None`: of every backend this build can
/// run), each with its backend's name.
pub fn golden_set(backend: Option<&str>) -> Result<Vec<(&'static str, GoldenCase)>> {
    let cpu = || golden_cases().into_iter().map(|c| ("cpu", c));
    let mlx = || mlx::golden_cases().into_iter().map(|c| ("mlx", c));
    match backend {
        None if cfg!(feature = "mlx") => Ok(cpu().chain(mlx()).collect()),
        None | Some("cpu") => Ok(cpu().collect()),
        Some("mlx") if cfg!(feature = "mlx") => Ok(mlx().collect()),
        Some("mlx") => Err(crate::error::Error::BackendNotCompiled { backend: "mlx" }),
        // CUDA goldens are checked only when asked for (a GPU may be absent).
        Some("cuda") if cfg!(feature = "cuda") => Ok(mlx::golden_cases()
            .into_iter()
            .map(|c| ("cuda", c))
            .collect()),
        Some("cuda") => Err(crate::error::Error::BackendNotCompiled { backend: "cuda" }),
        Some(other) => Err(crate::error::Error::invalid(
            "golden",
            format!("unknown backend `{other}` (cpu, mlx, cuda)"),
        )),
    }
}

/// A fresh run of a golden case on `backend` (a name from `golden_set`).
pub fn golden_run_for(
    backend: &str,
    case: &GoldenCase,
) -> Result<(GoldenBody, crate::engine::record::Fingerprint)> {
    match backend {
        "mlx" => mlx::golden_run(case),
        "cuda" => cuda_golden_run(case),
        _ => golden_run(case),
    }
}

/// A golden case on GPU 0 in the default CUDA settings (deterministic
/// reductions, no step recording): the card is named in the fingerprint.
#[cfg(feature = "cuda")]
fn cuda_golden_run(case: &GoldenCase) -> Result<(GoldenBody, crate::engine::record::Fingerprint)> {
    let model = Model::open(&format!("synth:{}", case.preset))?;
    generic::golden_run_on(&Engine::load(&model, cuda::open()?)?, case)
}

#[cfg(not(feature = "cuda"))]
fn cuda_golden_run(_case: &GoldenCase) -> Result<(GoldenBody, crate::engine::record::Fingerprint)> {
    Err(crate::error::Error::BackendNotCompiled { backend: "cuda" })
}

/// Checks every golden under `root` of the backends this build can run:
/// (name, outcome or error text).
pub fn golden_check(
    root: &std::path::Path,
) -> Result<Vec<(String, std::result::Result<GoldenOutcome, String>)>> {
    golden_check_on(root, None)
}

/// `golden_check` for one backend's goldens (`None`: every backend this
/// build can run).
pub fn golden_check_on(
    root: &std::path::Path,
    backend: Option<&str>,
) -> Result<Vec<(String, std::result::Result<GoldenOutcome, String>)>> {
    let mut out = Vec::new();
    let cases = golden_set(backend)?;
    let mut p = Progress::new("goldens", cases.len());
    for (i, (b, case)) in cases.iter().enumerate() {
        let (now, _) = golden_run_for(b, case)?;
        let name = now.name();
        let path = golden_path(root, &name);
        let res = golden::load(&path)
            .and_then(|g| golden::compare(&g, &now))
            .map_err(|e| e.to_string());
        out.push((name, res));
        p.set(i + 1);
    }
    Ok(out)
}

/// Whether the environment says this is a CI run.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Rewrites the goldens under `root` (each through a temporary file and a
/// rename, so a golden is replaced only once its successor is complete) and
/// returns a line per golden saying what changed. Refuses under CI.
pub fn golden_regen(root: &std::path::Path, backend: Option<&str>) -> Result<Vec<String>> {
    if under_ci() {
        return Err(crate::error::Error::invalid(
            "golden regen",
            "refusing to rewrite goldens under CI (CI is set); regenerate on a workstation and commit",
        ));
    }
    let mut lines = Vec::new();
    for (b, case) in golden_set(backend)? {
        let (now, fp) = golden_run_for(b, &case)?;
        let name = now.name();
        let path = golden_path(root, &name);
        let change = match golden::load(&path) {
            Err(_) => "new".to_string(),
            Ok(old) => match golden::compare(&old, &now) {
                Ok(GoldenOutcome::Identical) => "unchanged".into(),
                Ok(GoldenOutcome::ValuesMoved { step }) => {
                    format!("same tokens, values moved from step {step}")
                }
                Ok(
                    GoldenOutcome::NearTie { step, margin, .. }
                    | GoldenOutcome::Regression { step, margin, .. },
                ) => {
                    format!("tokens changed from step {step} (recorded margin {margin:.4})")
                }
                Err(e) => format!("replaced: {e}"),
            },
        };
        let text = golden::render_snap(&now, &fp);
        crate::util::write_atomically(&path, |w| std::io::Write::write_all(w, text.as_bytes()))?;
        lines.push(format!("{name}: {change}"));
    }
    Ok(lines)
}
