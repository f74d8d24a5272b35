//! Batched decode on the CPU reference: a sequence decoded with others (of
//! other lengths, joining mid-way, at other slots, dense and MoE, both
//! paths) gives bitwise the logits it gives alone; a planted
//! batch-dependent linear (negative control) is caught.

mod common;

use lockstep::backend::cpu::{CpuBackend, Faults, Numerics};
use lockstep::backend::AttnPath;
use lockstep::engine::Engine;
use lockstep::jobs::batch::batch_invariance;
use lockstep::model::Model;

use common::batch_plan as plan;

/// tiny on the CPU reference (bf16) with the batch-dependent linear: its
/// first output row moves by one ulp when it computes more than one row.
fn batch_dependent_tiny() -> Engine<CpuBackend> {
    let faults = Faults {
        batch_dependent_linear: true,
        ..Default::default()
    };
    Engine::load(
        &Model::open("synth:tiny").unwrap(),
        CpuBackend::with_faults(Numerics::Bf16, faults),
    )
    .unwrap()
}

#[test]
fn a_sequence_gives_the_same_bits_alone_and_in_any_batch() {
    for spec in ["synth:tiny", "synth:tiny-moe"] {
        for numerics in Numerics::ALL {
            let e = Engine::load(&Model::open(spec).unwrap(), CpuBackend::new(numerics)).unwrap();
            for path in AttnPath::ALL {
                for p in [
                    plan(1, vec![0], vec![0]),
                    plan(4, vec![0, 1, 2, 3], vec![0, 0, 0, 0]),
                    plan(4, vec![3, 1, 0, 2], vec![0, 2, 0, 5]),
                    plan(8, (0..8).rev().collect(), vec![0, 1, 1, 3, 0, 4, 2, 0]),
                    common::wide_batch_plan(12),
                ] {
                    let r = batch_invariance(&e, &p, path).unwrap();
                    assert!(r.bitwise, "{spec} {numerics:?}\n{}", r.to_text());
                    // The plan did batch: some sequence stepped with others.
                    if p.prompts.len() > 1 {
                        assert!(r
                            .sequences
                            .iter()
                            .any(|s| s.batch_sizes.iter().any(|&b| b > 1)));
                    }
                }
            }
        }
    }
}

/// A linear whose output bits depend on the batch size is caught: the
/// sequence in the first slot differs from its run alone, from the first
/// batched step; alone (a batch of one) it is unaffected.
#[test]
fn a_batch_dependent_linear_is_caught() {
    let e = batch_dependent_tiny();
    let r = batch_invariance(&e, &plan(3, vec![0, 1, 2], vec![0, 0, 0]), AttnPath::Graph).unwrap();
    println!("{}", r.to_text());
    assert!(!r.bitwise);
    assert_eq!(r.sequences[0].first_difference, Some(0));
    // Control: alone, the same faulty engine is its own reference.
    let one = batch_invariance(&e, &plan(1, vec![0], vec![0]), AttnPath::Graph).unwrap();
    assert!(one.bitwise);
}

/// A batch of one equals the engine's ordinary decode (generate), so the
/// alone side of the check is the decode users run.
#[test]
fn a_batch_of_one_is_the_ordinary_decode() {
    use lockstep::engine::generate::GenerateOptions;
    let e = Engine::load(
        &Model::open("synth:tiny-moe").unwrap(),
        CpuBackend::new(Numerics::Bf16),
    )
    .unwrap();
    let prompt = [1u32, 7, 42, 99];
    for path in AttnPath::ALL {
        let opts = GenerateOptions {
            max_tokens: 6,
            path,
            keep_logits: true,
            ..Default::default()
        };
        let run = e.generate(&prompt, &opts, &mut |_| {}).unwrap();
        let mut s = e.new_session(16).unwrap();
        e.forward(&mut s, &prompt, path, false, &mut Default::default())
            .unwrap();
        for (t, step) in run.steps.iter().enumerate().skip(1) {
            let row = e
                .step_batch(&mut [&mut s], &[run.tokens[t - 1]], path)
                .unwrap()
                .remove(0);
            let want: Vec<f32> = row.iter().map(|&v| v as f32).collect();
            assert_eq!(step.logits.as_ref().unwrap(), &want, "{path:?} step {t}");
        }
    }
}

/// A batch that cannot fit is refused before any work, with the field
/// named: positions past the model's, or a step into a full cache.
#[test]
fn a_batch_past_positions_or_capacity_is_refused_up_front() {
    let e = Engine::load(
        &Model::open("synth:tiny").unwrap(),
        CpuBackend::new(Numerics::Bf16),
    )
    .unwrap();
    let max = e.config.max_position_embeddings;
    let err = e.check_batch_fits(4, max + 1).unwrap_err().to_string();
    assert!(err.contains("max_position_embeddings"), "{err}");
    assert!(e.check_batch_fits(4, max).is_ok());
    let mut long = plan(2, vec![0, 1], vec![0, 0]);
    long.steps = max;
    let err = batch_invariance(&e, &long, AttnPath::Fused)
        .unwrap_err()
        .to_string();
    assert!(err.contains("max_position_embeddings"), "{err}");
    // A sequence whose cache is full is refused, and nothing advances.
    let mut a = e.new_session(1).unwrap();
    let mut b = e.new_session(4).unwrap();
    e.step_batch(&mut [&mut a], &[1], AttnPath::Graph).unwrap();
    let err = e
        .step_batch(&mut [&mut b, &mut a], &[1, 2], AttnPath::Graph)
        .unwrap_err()
        .to_string();
    assert!(err.contains("sequence 1") && err.contains("full"), "{err}");
    assert_eq!((a.pos, b.pos), (1, 0));
}

/// `verify`'s batch row passes on the reference and fails, naming the
/// sequence, on a batch-dependent linear (its negative control).
#[test]
fn the_verify_batch_row_passes_clean_and_fails_a_batch_dependent_linear() {
    use lockstep::jobs::batch::{batch_case, verify_plan};
    use lockstep::verify::checks::batch_row;
    use lockstep::verify::summary::Status;
    let m = Model::open("synth:tiny").unwrap();
    let clean = Engine::load(&m, CpuBackend::new(Numerics::Bf16)).unwrap();
    let faults = Faults {
        batch_dependent_linear: true,
        ..Default::default()
    };
    let faulty = Engine::load(&m, CpuBackend::with_faults(Numerics::Bf16, faults)).unwrap();
    let plan = verify_plan(clean.config.vocab_size);
    for path in AttnPath::ALL {
        let ok = batch_row(
            batch_case(&clean, path),
            &batch_invariance(&clean, &plan, path).unwrap(),
        );
        assert_eq!(ok.status, Status::Pass, "{}", ok.detail);
        assert!(ok.case.id().starts_with("batch("), "{}", ok.case.id());
        let bad = batch_row(
            batch_case(&faulty, path),
            &batch_invariance(&faulty, &plan, path).unwrap(),
        );
        assert_eq!(bad.status, Status::Fail, "{}", bad.detail);
        assert!(bad.detail.contains("differs from step"), "{}", bad.detail);
    }
}

/// The composition envelope (`lockstep batch`): on the CPU reference one
/// sequence has one result alone and in every composition, dense and MoE,
/// both paths. With the batch-dependent linear (its first row moves when
/// it computes more than one), exactly the compositions that put the
/// sequence first differ, from the first step they batch it, and the
/// distinct count shows the spread. A composition whose slot lies outside
/// its batch is refused.
#[test]
fn the_composition_envelope_is_one_result_and_sees_a_batch_dependent_linear() {
    use lockstep::jobs::batch::{composition_envelope, compositions, Composition};
    let prompt = lockstep::jobs::DEFAULT_PROMPT;
    let comps = compositions(9);
    for spec in ["synth:tiny", "synth:tiny-moe"] {
        let e = Engine::load(&Model::open(spec).unwrap(), CpuBackend::new(Numerics::Bf16)).unwrap();
        for path in AttnPath::ALL {
            let env = composition_envelope(&e, &prompt, &comps, 4, path).unwrap();
            assert!(env.bitwise, "{spec}\n{}", env.to_text());
            assert_eq!(env.distinct_per_step, vec![1; 4], "{spec}");
        }
    }
    let e = batch_dependent_tiny();
    let env = composition_envelope(&e, &prompt, &comps, 4, AttnPath::Graph).unwrap();
    println!("{}", env.to_text());
    assert!(!env.bitwise);
    assert!(env.runs.iter().any(|r| r.composition.slot == 0));
    for r in &env.runs {
        let c = r.composition;
        let expected = (c.slot == 0).then_some(c.companions_join);
        assert_eq!(r.first_difference, expected, "{c:?}");
    }
    assert!(env.distinct_per_step.iter().any(|&d| d > 1));
    let outside = Composition {
        batch: 2,
        slot: 2,
        companions_join: 0,
    };
    let err = composition_envelope(&e, &prompt, &[outside], 4, AttnPath::Graph).unwrap_err();
    assert!(err.to_string().contains("slot"), "{err}");
}
