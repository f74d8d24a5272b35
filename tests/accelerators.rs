//! One test suite for every accelerator, written once and instantiated per
//! backend (as candle's `test_device!`): MLX's CPU device, MLX's GPU device
//! and lockstep's CUDA backend. Each test opens the backend (or says loudly
//! why it skipped; LOCKSTEP_REQUIRE_MLX=1, LOCKSTEP_REQUIRE_MLX_GPU=1 and
//! LOCKSTEP_REQUIRE_GPU=1 make that a failure) and calls the library's jobs, the same ones
//! `lockstep verify` runs:
//! - teacher-forced logits against the CPU reference, row by row (MoE: up to
//!   a routing near-tie in the backend's own record), on both paths;
//! - greedy generation against the CPU reference, parting only at a near-tie;
//! - fused vs graph q, k, v at op level against the contract;
//! - bitwise stability: teacher-forced logits over 20 runs, op level over
//!   100, and two backend instances agreeing;
//! - the committed goldens of the backend, and negative controls (an edited
//!   golden, another model's logits) proving the checks can fail;
//! - the decode loop the bench times gives a recorded run's tokens, and the
//!   backend's argmax is the host's (ties, NaN, last row).
//!
//! LOCKSTEP_FILTER (comma-separated patterns) runs only the cases whose id
//! contains one of them, as `lockstep verify --filter` does. Backend-specific
//! tests live in mlx_backend.rs and cuda_backend.rs.

mod common;

use common::{open, wanted, PROMPT};
use lockstep::backend::cpu::CpuBackend;
use lockstep::backend::{AttnPath, Backend};
use lockstep::engine::generate::GenerateOptions;
use lockstep::engine::Engine;
use lockstep::ident::{BackendKind, Numerics};
use lockstep::jobs::accelerator::{greedy_vs_cpu, logits_case, logits_vs_cpu, GreedyVerdict};
use lockstep::jobs::envelope::envelope_case;
use lockstep::jobs::golden::{against_committed, golden_cases, golden_runs, GoldenCase};
use lockstep::jobs::parity::{layers_and_logits, op_case, op_parity_on};
use lockstep::jobs::{envelope_of, load, load_cpu, Accelerator, EnvelopeLevel, Fixture};
use lockstep::model::Model;
use lockstep::verify::case::{Case, Key, Op};
use lockstep::verify::golden::GoldenOutcome;
use lockstep::verify::metrics::diff;
use lockstep::verify::rows::RowVerdict;
use lockstep::verify::tolerances::{tol, Tol};

fn engine<A: Accelerator>(fx: &Fixture, be: A::Backend) -> Engine<A::Backend> {
    let e = load(&fx.model, be).unwrap();
    assert_eq!(
        e.model_hash, fx.bf16.model_hash,
        "engines hold different models"
    );
    e
}

/// Per-level distances of `e` from the CPU reference and from truth,
/// teacher-forced on the fixture's sequence (diagnostics for a failure).
fn level_table<A: Accelerator>(fx: &Fixture, e: &Engine<A::Backend>, path: AttnPath) {
    let m = layers_and_logits(e, &fx.seq, path).unwrap();
    let c = layers_and_logits(&fx.bf16, &fx.seq, path).unwrap();
    let t = layers_and_logits(&fx.truth, &fx.seq, AttnPath::Graph).unwrap();
    println!(
        "level     {0}-cpu rel_rms  max_abs    | {0}-truth rel_rms  cpu-truth rel_rms",
        A::KIND
    );
    let n = m.len();
    for (l, ((m, c), t)) in m.iter().zip(&c).zip(&t).enumerate() {
        let level = if l + 1 == n {
            "logits".to_string()
        } else {
            format!("layer {l}")
        };
        let (mc, mt, ct) = (diff(m, c), diff(m, t), diff(c, t));
        println!(
            "{level:<9} {:.3e}        {:.3e}  | {:.3e}          {:.3e}",
            mc.rel_rms, mc.max_abs, mt.rel_rms, ct.rel_rms
        );
        assert!(
            mc.finite_ok(),
            "{level}: non-finite at {:?}",
            mc.first_non_finite
        );
    }
}

pub fn logits_match_the_cpu_reference<A: Accelerator>(test: &str, preset: &str) {
    let Some((_lock, be)) = open::<A>(test) else {
        return;
    };
    let fx = Fixture::preset(preset).unwrap();
    let e = engine::<A>(&fx, be);
    println!("device: {:?}", e.backend.device_info());
    for path in AttnPath::ALL {
        let case = logits_case(&e, fx.seq.len()).path(path);
        if !wanted(&case) {
            continue;
        }
        level_table::<A>(&fx, &e, path);
        let l = logits_vs_cpu(&e, &fx.bf16, &fx.seq, path, A::LOGITS_TOLERANCE).unwrap();
        println!("row  rel_rms    nearest routing tie (gap, MoE layer)");
        for (r, d) in l.rows.iter().enumerate() {
            println!("{r:>3}  {d:.3e}  {:?}", l.ties[r]);
        }
        println!(
            "{case}: {:?} ({} = {})",
            l.verdict,
            A::LOGITS_TOLERANCE,
            tol(A::LOGITS_TOLERANCE)
        );
        assert!(l.verdict.passes(), "{case}: {:?}", l.verdict);
    }
}

pub fn greedy_matches_the_cpu_reference<A: Accelerator>(test: &str, preset: &str) {
    let Some((_lock, be)) = open::<A>(test) else {
        return;
    };
    const STEPS: usize = 32;
    let fx = Fixture::preset(preset).unwrap();
    let e = engine::<A>(&fx, be);
    for path in AttnPath::ALL {
        let case = Case::new(Op::Greedy, A::KIND)
            .preset(preset)
            .path(path)
            .with(Key::Steps, STEPS)
            .with(Key::Vs, BackendKind::Cpu);
        if !wanted(&case) {
            continue;
        }
        let (v, ours, cpu) =
            greedy_vs_cpu(&e, &fx.bf16, &PROMPT, STEPS, path, A::LOGITS_TOLERANCE).unwrap();
        println!("{case}: ours {ours:?}\n{case}: cpu  {cpu:?}\n{case}: {v:?}");
        assert!(v.passes(), "{case}: {v:?}");
        if let GreedyVerdict::NearTie { step, margin } = v {
            println!(
                "{case}: parts at step {step}, a near-tie (margin {margin:.5} < {})",
                tol(Tol::NearTieMarginBf16)
            );
        }
    }
}

/// Fused vs graph q, k, v from the same inputs, every layer within
/// `fused_vs_graph_rms`; f64 truth says which path is nearer.
pub fn fused_qkv_matches_graph<A: Accelerator>(test: &str, presets: &[&str]) {
    for preset in presets {
        let Some((_lock, be)) = open::<A>(test) else {
            return;
        };
        // The default models on their long sequence; real shapes on the
        // prompt alone (a CPU continuation of them would take minutes).
        let (model, truth, seq) = match preset.starts_with("tiny") {
            true => {
                let fx = Fixture::preset(preset).unwrap();
                (fx.model, fx.truth, fx.seq)
            }
            false => {
                let m = Model::open(&format!("synth:{preset}")).unwrap();
                let t = load_cpu(&m, Numerics::F64).unwrap();
                let v = m.config.vocab_size as u32;
                (m, t, PROMPT.iter().map(|&x| x % v).collect())
            }
        };
        let e = load(&model, be).unwrap();
        if !wanted(&op_case(&e, seq.len())) {
            continue;
        }
        let op = op_parity_on(&e, &truth, &seq, Tol::FusedVsGraphRms).unwrap();
        println!("{}", op.to_text());
        assert!(op.pass, "{}", op.to_text());
    }
}

pub fn teacher_forced_logits_are_bitwise_stable<A: Accelerator>(test: &str, preset: &str) {
    const RUNS: usize = 20;
    let Some((_lock, be)) = open::<A>(test) else {
        return;
    };
    let fx = Fixture::preset(preset).unwrap();
    let e = engine::<A>(&fx, be);
    let other = engine::<A>(&fx, A::open().unwrap());
    for path in AttnPath::ALL {
        if !wanted(&envelope_case(
            &e,
            EnvelopeLevel::Logits,
            path,
            fx.seq.len(),
        )) {
            continue;
        }
        let env = envelope_of(&e, EnvelopeLevel::Logits, path, &fx.seq, RUNS).unwrap();
        println!("{}", env.to_text());
        assert_eq!(env.distinct, 1, "{}", env.to_text());
        // A second backend instance lands on the same bits.
        let first = |e: &Engine<A::Backend>| {
            e.teacher_forced(&fx.seq, path, &mut Default::default())
                .unwrap()
                .concat()
        };
        let (a, b) = (first(&e), first(&other));
        assert!(
            a.iter()
                .map(|v| v.to_bits())
                .eq(b.iter().map(|v| v.to_bits())),
            "{}: two backend instances disagree bitwise",
            env.case
        );
    }
}

/// q, k, v of every layer over 100 runs (each layer's input held fixed):
/// one bitwise result per path.
pub fn op_level_envelopes_have_one_distinct_result<A: Accelerator>(test: &str) {
    let Some((_lock, be)) = open::<A>(test) else {
        return;
    };
    let m = Model::open("synth:tiny").unwrap();
    let e = load(&m, be).unwrap();
    for path in AttnPath::ALL {
        if !wanted(&envelope_case(&e, EnvelopeLevel::Op, path, PROMPT.len())) {
            continue;
        }
        let env = envelope_of(&e, EnvelopeLevel::Op, path, &PROMPT, 100).unwrap();
        println!("{}", env.to_text());
        assert_eq!(env.distinct, 1, "{}", env.to_text());
    }
}

fn fresh_and_committed(cases: &[GoldenCase]) -> Vec<(String, GoldenOutcome)> {
    golden_runs(cases)
        .unwrap()
        .into_iter()
        .map(|(now, fp)| {
            let name = now.name();
            let out = against_committed(common::root(), &now, &fp).unwrap_or_else(|e| {
                panic!(
                    "{name}: {e}\n(write it with `lockstep golden regen --backend {}`)",
                    now.backend
                )
            });
            if !matches!(
                out,
                GoldenOutcome::Identical | GoldenOutcome::NearTie { .. }
            ) {
                // Fails with insta's diff, leaving a .snap.new for review.
                common::insta_assert(&name, &now.render());
            }
            (name, out)
        })
        .collect()
}

/// The committed goldens of the backend reproduce: the same tokens and
/// values, or a token change at a recorded near-tie (a warning).
pub fn committed_goldens_reproduce<A: Accelerator>(test: &str) {
    let Some((_lock, _be)) = open::<A>(test) else {
        return;
    };
    let all = golden_cases(A::KIND);
    assert_eq!(all.len(), 4, "tiny and tiny-moe on both paths");
    let cases: Vec<GoldenCase> = all.into_iter().filter(|c| wanted(&c.case())).collect();
    for (name, out) in fresh_and_committed(&cases) {
        println!("{name}: {out:?}");
        if let GoldenOutcome::NearTie {
            step,
            margin,
            threshold,
        } = out
        {
            eprintln!("warning: {name}: tokens differ from step {step}, a recorded near-tie (margin {margin:.4} < {threshold})");
        }
        assert!(out.passes(), "{name}: {out:?}");
    }
}

/// Negative control: a golden of the backend with one token changed at a
/// confident step fails the check against a fresh run.
pub fn an_edited_golden_fails_the_check<A: Accelerator>(test: &str) {
    let Some((_lock, _be)) = open::<A>(test) else {
        return;
    };
    let case = golden_cases(A::KIND)[0];
    let (now, _) = golden_runs(&[case]).unwrap().swap_remove(0);
    let path = lockstep::verify::golden::golden_path(common::root(), &now.name());
    let mut g = lockstep::verify::golden::load(&path).unwrap();
    let step = common::edit_a_confident_step(&mut g);
    let out = lockstep::verify::golden::compare(&g, &now).unwrap();
    println!("{}: {out:?}", now.name());
    assert!(
        matches!(out, GoldenOutcome::Regression { step: s, .. } if s == step),
        "{out:?}"
    );
    assert!(!out.passes());
}

/// Negative control for the row rule: the backend running a model with
/// other weights is refused, not explained away as a routing near-tie.
pub fn row_rule_refuses_another_models_logits<A: Accelerator>(test: &str) {
    let Some((_lock, be)) = open::<A>(test) else {
        return;
    };
    let fx = Fixture::preset("tiny-moe").unwrap();
    let other = load(&Model::open("synth:tiny-moe:1").unwrap(), be).unwrap();
    let cpu: &Engine<CpuBackend> = &fx.bf16;
    assert_ne!(cpu.model_hash, other.model_hash);
    let e = logits_vs_cpu(&other, cpu, &fx.seq, AttnPath::Graph, A::LOGITS_TOLERANCE)
        .err()
        .expect("logits of another model were compared");
    println!("refused as expected: {e}");
    assert!(e.to_string().contains("refusing to compare"), "{e}");
    // With the identity check out of the way (the same hash), the row rule
    // itself must reject these logits.
    let c = cpu
        .teacher_forced(&fx.seq, AttnPath::Graph, &mut Default::default())
        .unwrap();
    let o = other
        .teacher_forced(&fx.seq, AttnPath::Graph, &mut Default::default())
        .unwrap();
    let rows: Vec<f64> = o.iter().zip(&c).map(|(o, c)| diff(o, c).rel_rms).collect();
    other.backend.record_routing(true);
    other
        .teacher_forced(&fx.seq, AttnPath::Graph, &mut Default::default())
        .unwrap();
    let ties =
        lockstep::jobs::accelerator::nearest_ties(&other.backend.take_routing_log(), rows.len());
    let v = lockstep::verify::rows::judge_rows(&rows, &ties, A::LOGITS_TOLERANCE);
    println!("{v:?}");
    assert!(matches!(v, RowVerdict::Outside { .. }), "{v:?}");
}

/// The greedy tokens the bench times (`decode_greedy`: the token picked on
/// the device, the step recorded or pipelined where the backend does so)
/// are the tokens of a recorded run, whose every step's logits come to the
/// host and are argmaxed there.
pub fn decode_greedy_gives_the_recorded_runs_tokens<A: Accelerator>(test: &str) {
    const STEPS: usize = 24;
    let Some((_lock, be)) = open::<A>(test) else {
        return;
    };
    let mut be = Some(be);
    for preset in ["tiny", "tiny-moe"] {
        let e = load(
            &Model::open(&format!("synth:{preset}")).unwrap(),
            be.take().unwrap(),
        )
        .unwrap();
        for path in AttnPath::ALL {
            let opts = GenerateOptions {
                max_tokens: STEPS,
                path,
                ..Default::default()
            };
            let recorded = e.generate(&PROMPT, &opts, &mut |_| {}).unwrap().tokens;
            let mut seen = Vec::new();
            let decoded = e
                .decode_greedy(&PROMPT, STEPS, path, &mut |i| seen.push(i))
                .unwrap();
            assert_eq!(
                decoded,
                recorded,
                "{preset} {}: decode_greedy vs generate",
                path.name()
            );
            assert_eq!(
                seen,
                (0..STEPS).collect::<Vec<_>>(),
                "on_token once per token, in order"
            );
            // The control: a different prompt decodes differently, so the
            // equality above is not of constant sequences.
            let other = e
                .decode_greedy(&PROMPT[1..], STEPS, path, &mut |_| {})
                .unwrap();
            assert_ne!(
                other, decoded,
                "{preset}: two prompts gave one continuation"
            );
        }
        be = Some(e.backend);
    }
}

/// The backend's greedy pick (and its deferred pick, where it pipelines)
/// is the host's: ties to the lower index, NaN never chosen, from the last
/// row only.
pub fn argmax_ties_to_the_lower_index_and_never_picks_nan<A: Accelerator>(test: &str) {
    let Some((_lock, be)) = open::<A>(test) else {
        return;
    };
    let (nan, inf) = (f64::NAN, f64::INFINITY);
    let rows: [(&[f64], usize); 7] = [
        (&[0.0, 3.0, 1.0, 3.0, 2.0], 1),
        (&[1.0, 2.0, 5.0, 5.0, 5.0], 2),
        (&[nan, 1.0, 4.0, nan, 4.0], 2),
        (&[nan, nan, nan, nan, nan], 0),
        (&[-inf, -inf, -inf, -inf, -inf], 0),
        (&[-inf, -2.0, inf, 7.0, inf], 2),
        (&[-1.0, -1.0, -3.0, -1.0, -0.5], 4),
    ];
    for (row, want) in rows {
        assert_eq!(
            lockstep::logits::argmax(row),
            want,
            "the host's rule on {row:?}"
        );
        // A first row that would win if the backend looked at it.
        let mut two = vec![9.0; row.len()];
        two.extend_from_slice(row);
        let t = be.activation_from_host(&two, 2, row.len()).unwrap();
        assert_eq!(be.argmax(&t).unwrap() as usize, want, "argmax of {row:?}");
        if let Some(d) = be.argmax_deferred(&t).unwrap() {
            assert_eq!(
                be.deferred_token(&d).unwrap() as usize,
                want,
                "deferred argmax of {row:?}"
            );
        }
    }
}

/// Instantiates the suite for one accelerator as a module of tests.
/// The fused path's bits do not move with layout alone (row offset in a
/// batch, other buffers held, KV-cache room): `verify`'s layout row.
pub fn fused_layout_is_bitwise_invariant<A: Accelerator>(test: &str) {
    let Some((_lock, be)) = open::<A>(test) else {
        return;
    };
    let m = Model::open("synth:tiny").unwrap();
    let e = load(&m, be).unwrap();
    let r = lockstep::jobs::layout::fused_layout(
        &e,
        &common::prompt_and_continuation(&m, &PROMPT, 8).unwrap(),
    )
    .unwrap();
    println!("{}: {}", r.case, r.summary());
    assert!(r.pass, "{}", r.summary());
}

/// Fused vs graph q, k, v of a single row (the decode-step kernels) at
/// every position of `DECODE_POSITIONS`, under the op contract.
pub fn single_row_ops_meet_the_contract_at_decode_positions<A: Accelerator>(test: &str) {
    let Some((_lock, be)) = open::<A>(test) else {
        return;
    };
    let m = Model::open("synth:tiny").unwrap();
    let e = load(&m, be).unwrap();
    let truth = load_cpu(&m, Numerics::F64).unwrap();
    let seq = common::prompt_and_continuation(&m, &PROMPT, 8).unwrap();
    for position in lockstep::jobs::parity::DECODE_POSITIONS {
        let op = lockstep::jobs::parity::decode_op_parity_on(
            &e,
            &truth,
            &seq,
            position,
            Tol::FusedVsGraphRms,
        )
        .unwrap();
        println!(
            "{}: {}",
            op.case,
            op.to_text().lines().next().unwrap_or_default()
        );
        assert!(op.first_failure().is_none(), "{}", op.to_text());
    }
}

/// The transformers-written checkpoints of tests/checkpoints/ (head_dim 48,
/// 80 and 256, odd vocabularies, an MoE model without renormalisation): the
/// backend's bf16 logits against the CPU reference's on both paths. Every
/// backend takes these shapes; a refusal fails.
/// Opens the backend once and runs `check` on each model of `specs` loaded
/// on it in turn (one device, one lock); skips as `open` does.
fn on_each_model<A: Accelerator>(
    test: &str,
    specs: &[String],
    mut check: impl FnMut(&Model, &Engine<A::Backend>),
) {
    let Some((_lock, be)) = open::<A>(test) else {
        return;
    };
    let mut be = Some(be);
    for spec in specs {
        let m = Model::open(spec).unwrap();
        let e = load(&m, be.take().unwrap()).unwrap();
        check(&m, &e);
        be = Some(e.backend);
    }
}

pub fn external_checkpoints_match_the_cpu_reference<A: Accelerator>(test: &str) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/checkpoints");
    let mut dirs: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .map(|p| p.to_str().unwrap().to_string())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 4, "{} checkpoints", dirs.len());
    on_each_model::<A>(test, &dirs, |m, e| {
        let seq = common::prompt_and_continuation(m, &PROMPT, 8).unwrap();
        let cpu = load_cpu(m, Numerics::Bf16).unwrap();
        for path in AttnPath::ALL {
            let l = logits_vs_cpu(e, &cpu, &seq, path, A::LOGITS_TOLERANCE)
                .unwrap_or_else(|err| panic!("{} {}: {err}", m.origin, path.name()));
            println!("{} {}: {:?}", m.origin, path.name(), l.verdict);
            assert!(
                l.verdict.passes(),
                "{} {}: {:?}",
                m.origin,
                path.name(),
                l.verdict
            );
        }
    });
}

/// The transformers bfloat16 references of tiny and tiny-moe
/// (golden/reference/) judged on this backend's bf16 run, as
/// `compare-reference --backend` does.
pub fn bfloat16_references_hold<A: Accelerator>(test: &str) {
    use lockstep::jobs::oracle::{compare_on, embedded_references};
    use lockstep::verify::reference::RefDtype;
    on_each_model::<A>(test, &tiny_models(), |m, e| {
        let preset = m.name();
        for r in embedded_references(&preset).unwrap() {
            if r.dtype != RefDtype::Bfloat16 {
                continue;
            }
            let report = compare_on(e, &r).unwrap();
            println!("{preset}: worst rel RMS {:.3e}", report.worst_rel_rms);
            assert!(report.pass, "{}", report.to_text());
        }
    });
}

/// synth:tiny and synth:tiny-moe.
fn tiny_models() -> Vec<String> {
    ["synth:tiny", "synth:tiny-moe"].map(String::from).to_vec()
}

/// Batched decode: each sequence of a mixed batch (other lengths, joining
/// mid-way, other slots) gives bitwise the logits it gives alone, on both
/// paths, dense and MoE.
pub fn batched_decode_is_batch_invariant<A: Accelerator>(test: &str) {
    on_each_model::<A>(test, &tiny_models(), |m, e| {
        for path in AttnPath::ALL {
            for plan in [
                common::batch_plan(4, vec![0, 1, 2, 3], vec![0, 0, 0, 0]),
                common::batch_plan(5, vec![4, 2, 0, 1, 3], vec![0, 2, 0, 4, 1]),
                common::wide_batch_plan(12),
                common::wide_batch_plan(20),
            ] {
                let r = lockstep::jobs::batch::batch_invariance(e, &plan, path).unwrap();
                println!("{}: {}", m.name(), r.to_text());
                assert!(r.bitwise, "{}\n{}", m.name(), r.to_text());
            }
        }
    });
}

macro_rules! accelerator_suite {
    ($name:ident, $backend:ty, op_presets = [$($preset:literal),*]) => {
        mod $name {
            use super::*;
            type A = $backend;
            const B: &str = stringify!($name);

            fn t(test: &str) -> String {
                format!("tests/accelerators.rs::{B}::{test}")
            }

            #[test]
            fn logits_match_the_cpu_reference_on_tiny() {
                logits_match_the_cpu_reference::<A>(&t("logits_match_the_cpu_reference_on_tiny"), "tiny");
            }

            #[test]
            fn logits_match_the_cpu_reference_on_tiny_moe() {
                logits_match_the_cpu_reference::<A>(&t("logits_match_the_cpu_reference_on_tiny_moe"), "tiny-moe");
            }

            #[test]
            fn greedy_generation_matches_the_cpu_reference_or_parts_at_a_near_tie_on_tiny() {
                greedy_matches_the_cpu_reference::<A>(&t("greedy_generation_matches_the_cpu_reference_or_parts_at_a_near_tie_on_tiny"), "tiny");
            }

            #[test]
            fn greedy_generation_matches_the_cpu_reference_or_parts_at_a_near_tie_on_tiny_moe() {
                greedy_matches_the_cpu_reference::<A>(&t("greedy_generation_matches_the_cpu_reference_or_parts_at_a_near_tie_on_tiny_moe"), "tiny-moe");
            }

            #[test]
            fn fused_qkv_matches_graph_within_the_contract() {
                fused_qkv_matches_graph::<A>(&t("fused_qkv_matches_graph_within_the_contract"), &[$($preset),*]);
            }

            #[test]
            fn teacher_forced_logits_are_bitwise_stable_over_20_runs_on_tiny() {
                teacher_forced_logits_are_bitwise_stable::<A>(&t("teacher_forced_logits_are_bitwise_stable_over_20_runs_on_tiny"), "tiny");
            }

            #[test]
            fn teacher_forced_logits_are_bitwise_stable_over_20_runs_on_tiny_moe() {
                teacher_forced_logits_are_bitwise_stable::<A>(&t("teacher_forced_logits_are_bitwise_stable_over_20_runs_on_tiny_moe"), "tiny-moe");
            }

            #[test]
            fn op_level_envelopes_have_one_distinct_result_over_100_runs() {
                op_level_envelopes_have_one_distinct_result::<A>(&t("op_level_envelopes_have_one_distinct_result_over_100_runs"));
            }

            #[test]
            fn the_committed_goldens_reproduce() {
                committed_goldens_reproduce::<A>(&t("the_committed_goldens_reproduce"));
            }

            #[test]
            fn a_golden_edited_at_a_confident_step_fails_the_check() {
                an_edited_golden_fails_the_check::<A>(&t("a_golden_edited_at_a_confident_step_fails_the_check"));
            }

            #[test]
            fn decode_greedy_gives_the_recorded_runs_tokens_on_tiny_and_tiny_moe() {
                decode_greedy_gives_the_recorded_runs_tokens::<A>(&t("decode_greedy_gives_the_recorded_runs_tokens_on_tiny_and_tiny_moe"));
            }

            #[test]
            fn the_backends_argmax_is_the_hosts() {
                argmax_ties_to_the_lower_index_and_never_picks_nan::<A>(&t("the_backends_argmax_is_the_hosts"));
            }

            #[test]
            fn the_transformers_bfloat16_references_hold() {
                bfloat16_references_hold::<A>(&t("the_transformers_bfloat16_references_hold"));
            }

            #[test]
            fn transformers_written_checkpoints_match_the_cpu_reference() {
                external_checkpoints_match_the_cpu_reference::<A>(&t("transformers_written_checkpoints_match_the_cpu_reference"));
            }

            #[test]
            fn the_fused_path_is_bitwise_the_same_under_layout_changes() {
                fused_layout_is_bitwise_invariant::<A>(&t("the_fused_path_is_bitwise_the_same_under_layout_changes"));
            }

            #[test]
            fn single_row_fused_and_graph_meet_the_op_contract_at_decode_positions() {
                single_row_ops_meet_the_contract_at_decode_positions::<A>(&t("single_row_fused_and_graph_meet_the_op_contract_at_decode_positions"));
            }

            #[test]
            fn batched_decode_gives_each_sequence_its_bits_alone() {
                batched_decode_is_batch_invariant::<A>(&t("batched_decode_gives_each_sequence_its_bits_alone"));
            }

            #[test]
            fn the_row_rule_refuses_logits_of_a_model_with_other_weights() {
                row_rule_refuses_another_models_logits::<A>(&t("the_row_rule_refuses_logits_of_a_model_with_other_weights"));
            }
        }
    };
}

accelerator_suite!(
    mlx,
    lockstep::jobs::accelerator::Mlx,
    op_presets = ["tiny", "tiny-moe"]
);
accelerator_suite!(
    mlx_gpu,
    lockstep::jobs::accelerator::MlxGpu,
    op_presets = ["tiny", "tiny-moe", "qwen3-0.6b"]
);
accelerator_suite!(
    cuda,
    lockstep::jobs::accelerator::Cuda,
    op_presets = ["tiny", "tiny-moe", "qwen3-0.6b"]
);
