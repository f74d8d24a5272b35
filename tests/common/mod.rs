//! Helpers shared by the integration tests.
#![allow(dead_code)]

use lockstep::backend::cpu::{CpuBackend, Numerics};
use lockstep::engine::generate::GenerateOptions;
use lockstep::engine::Engine;
use lockstep::model::{synth::Synth, write_synth_folder, Model};
use std::path::{Path, PathBuf};

/// The repository root (holding golden/): where the tests were built, or
/// the working directory when a test binary runs on another machine (the
/// GPU machine runs bundled binaries from a copy of the repository).
pub fn root() -> &'static Path {
    let built = Path::new(env!("CARGO_MANIFEST_DIR"));
    if built.join("golden").is_dir() {
        built
    } else {
        Path::new(".")
    }
}

/// Compares `body` with the committed snapshot `golden/{name}.snap` through
/// insta: a difference fails with insta's diff and leaves a `.snap.new`
/// for `cargo insta review`.
pub fn insta_assert(name: &str, body: &str) {
    let mut s = insta::Settings::clone_current();
    s.set_snapshot_path(root().join("golden"));
    s.set_prepend_module_to_snapshot(false);
    s.bind(|| insta::assert_snapshot!(name, body));
}

/// A fresh, empty folder under the target dir, unique per test name.
pub fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `synth:PRESET:SEED` as a folder named `name`.
pub fn synth_folder(name: &str, preset: &str, seed: u64) -> PathBuf {
    let dir = scratch(name);
    write_synth_folder(&Synth::new(preset, seed).unwrap(), &dir, None).unwrap();
    dir
}

pub fn cpu_engine(spec: &str, numerics: Numerics) -> Engine<CpuBackend> {
    Engine::load(&Model::open(spec).unwrap(), CpuBackend::new(numerics)).unwrap()
}

pub const PROMPT: [u32; 8] = lockstep::jobs::DEFAULT_PROMPT;

/// `prompt` and `extra` greedy tokens of `model`'s CPU bf16 graph path.
pub fn prompt_and_continuation(
    model: &Model,
    prompt: &[u32],
    extra: usize,
) -> lockstep::Result<Vec<u32>> {
    let e = Engine::load(model, CpuBackend::new(Numerics::Bf16))?;
    lockstep::jobs::continuation(&e, prompt, extra)
}

/// The prompt plus 24 greedy tokens of the CPU bf16 reference: the same
/// input for every backend, with positions well past the prompt.
pub fn sequence(spec: &str) -> Vec<u32> {
    let run = cpu_engine(spec, Numerics::Bf16)
        .generate(
            &PROMPT,
            &GenerateOptions {
                max_tokens: 24,
                ..Default::default()
            },
            &mut |_| {},
        )
        .unwrap();
    [PROMPT.to_vec(), run.tokens].concat()
}

/// The negative control of a golden check: changes the golden's token at
/// its first confident step (margin >= 0.5, so no near-tie can excuse it)
/// and returns that step.
pub fn edit_a_confident_step(g: &mut lockstep::verify::golden::GoldenBody) -> usize {
    let step = g
        .steps
        .iter()
        .position(|s| s.margin >= 0.5)
        .expect("a confident step");
    g.tokens[step] += 1;
    g.steps[step].token += 1;
    step
}

/// The accelerator a test needs, opened, with the lock that keeps GPU tests
/// from running concurrently on one device; or `None` after a loud skip (a
/// failure under the backend's LOCKSTEP_REQUIRE_* variable).
pub fn open<A: lockstep::jobs::Accelerator>(
    test: &str,
) -> Option<(Option<std::sync::MutexGuard<'static, ()>>, A::Backend)> {
    static GPU: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let guard = A::KIND
        .on_gpu()
        .then(|| GPU.lock().unwrap_or_else(|p| p.into_inner()));
    match A::open() {
        Ok(b) => Some((guard, b)),
        Err(e) if e.is_unavailable() => {
            lockstep::skip::skip(A::NEED, test, &e.to_string());
            None
        }
        Err(e) => panic!("{test}: {} could not be opened: {e}", A::KIND),
    }
}

/// Whether `LOCKSTEP_FILTER` (comma-separated patterns of case ids; unset:
/// all) selects `case`; says so when it does not.
pub fn wanted(case: &lockstep::verify::case::Case) -> bool {
    let yes = lockstep::verify::case::Filter::from_env().matches(case);
    if !yes {
        use std::io::Write;
        let _ =
            std::io::stderr().write_all(format!("FILTERED {case} (LOCKSTEP_FILTER)\n").as_bytes());
    }
    yes
}

/// A row's fused q, k, v on `e` is bit-identical whether the row is alone or
/// among up to 64 rows. Layer 0's input for row r depends only on token r
/// (no attention before it), so layer 0 of batches 1..64 is compared with
/// the full batch.
pub fn assert_fused_batch_invariant<B: lockstep::backend::Backend>(e: &Engine<B>) {
    use lockstep::backend::AttnPath;
    let ids: Vec<u32> = (0..64u32).map(|i| (i * 37 + 5) % 512).collect();
    let all = e.record_attention_inputs(&ids, &[AttnPath::Fused]).unwrap();
    for n in [1usize, 2, 7, 32, 64] {
        let part = e
            .record_attention_inputs(&ids[..n], &[AttnPath::Fused])
            .unwrap();
        for t in 0..3 {
            let w = part[0].by_path[0].1[t].len() / n;
            assert_eq!(
                part[0].by_path[0].1[t][..n * w],
                all[0].by_path[0].1[t][..n * w],
                "batch of {n}: tensor {t} differs from the batch of 64"
            );
        }
    }
}

/// The fused path rounds once where the transformers-faithful graph path
/// rounds after every op: f64 truth must side with it on every q and k.
pub fn assert_fused_nearer_truth_on_q_and_k(op: &lockstep::verify::parity::ParityReport) {
    use lockstep::verify::parity::Nearer;
    for l in &op.levels {
        for t in l.tensors.iter().filter(|t| t.tensor != "v") {
            assert_eq!(
                t.nearer_truth,
                Some(Nearer::Fused),
                "{} {}: {}",
                l.level,
                t.tensor,
                op.to_text()
            );
        }
    }
}

/// The large-model checks of a GPU backend: fused vs graph q, k, v at every
/// layer within `fused_vs_graph_rms` (printing the worst RMS per tensor
/// under `label`), and, for dense models, teacher-forced logits of both
/// paths against the CPU reference (bf16) within `logits_tol`. An MoE model
/// skips the CPU comparison (the reference would hold it a second time).
pub fn assert_large_model_parity<B: lockstep::backend::Backend>(
    spec: &str,
    label: &str,
    m: &Model,
    e: &Engine<B>,
    logits_tol: lockstep::verify::tolerances::Tol,
    cpu_too: bool,
) {
    use lockstep::backend::AttnPath;
    use lockstep::verify::metrics::diff;
    use lockstep::verify::tolerances::{tol, Tol};
    const PROMPT8: [u32; 8] = lockstep::jobs::DEFAULT_PROMPT;
    let rec = e
        .record_attention_inputs(&PROMPT8, &[AttnPath::Graph, AttnPath::Fused])
        .unwrap();
    let limit = tol(Tol::FusedVsGraphRms);
    let mut worst = [0.0f64; 3];
    for l in &rec {
        let (g, f) = (&l.by_path[0].1, &l.by_path[1].1);
        for i in 0..3 {
            let d = diff(&f[i], &g[i]);
            assert!(
                d.finite_ok() && d.rms < limit,
                "{spec} {label}: layer {} tensor {i}: {:.3e}",
                l.layer,
                d.rms
            );
            worst[i] = worst[i].max(d.rms);
        }
    }
    println!(
        "{spec} {label} vs graph over {} layers, worst RMS q {:.3e} k {:.3e} v {:.3e}",
        rec.len(),
        worst[0],
        worst[1],
        worst[2]
    );
    if !cpu_too {
        return;
    }
    if m.config.moe.is_some() {
        println!("{spec}: CPU reference comparison skipped (too large for host memory twice)");
        return;
    }
    let cpu = Engine::load(m, CpuBackend::new(Numerics::Bf16)).unwrap();
    assert_eq!(cpu.model_hash, e.model_hash);
    for path in AttnPath::ALL {
        let a = e
            .teacher_forced(&PROMPT8, path, &mut Default::default())
            .unwrap();
        let b = cpu
            .teacher_forced(&PROMPT8, path, &mut Default::default())
            .unwrap();
        let w = a
            .iter()
            .zip(&b)
            .map(|(x, y)| diff(x, y).rel_rms)
            .fold(0.0, f64::max);
        println!(
            "{spec} {}: {label} vs cpu bf16 logits, worst-row rel RMS {w:.3e}",
            path.name()
        );
        assert!(w < tol(logits_tol), "{w:.3e}");
    }
}

/// `n` sequences of prompt lengths 3, 5, 7, ..., joining at `joins`, in
/// slot `order`, 6 decode steps each (the batch-invariance checks).
/// `batch_plan` of `n` sequences (n not a multiple of 7) in a shuffled
/// slot order, joining over the first three steps: batches past one GEMV
/// pass of eight rows.
pub fn wide_batch_plan(n: usize) -> lockstep::jobs::batch::BatchPlan {
    batch_plan(
        n,
        (0..n).map(|i| (i * 7) % n).collect(),
        (0..n).map(|i| i % 3).collect(),
    )
}

pub fn batch_plan(
    n: usize,
    order: Vec<usize>,
    joins: Vec<usize>,
) -> lockstep::jobs::batch::BatchPlan {
    lockstep::jobs::batch::BatchPlan {
        prompts: (0..n)
            .map(|i| {
                (0..(3 + 2 * i) as u32)
                    .map(|t| 1 + (t * 37 + i as u32 * 11) % 400)
                    .collect()
            })
            .collect(),
        joins,
        steps: 6,
        order,
    }
}
