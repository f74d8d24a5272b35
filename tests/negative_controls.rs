//! Negative controls: planted bugs that the named checks must catch. A
//! harness that cannot fail proves nothing.

mod common;
use common::{prompt_and_continuation, PROMPT};
use lockstep::backend::cpu::{Faults, Numerics};
use lockstep::jobs::parity::cpu_parity;
use lockstep::model::Model;

/// The bf16 CPU reference of `m` with `faults` planted.
fn bf16_with(
    m: &Model,
    faults: Faults,
) -> lockstep::engine::Engine<lockstep::backend::cpu::CpuBackend> {
    lockstep::jobs::load(
        m,
        lockstep::backend::cpu::CpuBackend::with_faults(Numerics::Bf16, faults),
    )
    .unwrap()
}

fn op_check_fails(numerics: Numerics, faults: Faults, what: &str) {
    let m = Model::open("synth:tiny").unwrap();
    let seq = prompt_and_continuation(&m, &PROMPT, 8).unwrap();
    let (op, _) = cpu_parity(&m, numerics, faults, &seq).unwrap();
    let (level, t) = op.first_failure().unwrap_or_else(|| {
        panic!(
            "planted bug `{what}` passed the op check:\n{}",
            op.to_text()
        )
    });
    println!(
        "`{what}` caught at {level} {}: RMS {:.3e} ({})",
        t.tensor, t.fused_vs_graph.rms, op.rule
    );
}

#[test]
fn rope_position_off_by_one_fails_the_bf16_contract() {
    let f = Faults {
        fused_rope_position_offset: 1,
        ..Default::default()
    };
    op_check_fails(Numerics::Bf16, f, "RoPE position + 1");
}

#[test]
fn q_norm_weight_applied_to_k_fails_the_bf16_contract() {
    let f = Faults {
        fused_k_uses_q_norm: true,
        ..Default::default()
    };
    op_check_fails(Numerics::Bf16, f, "q-norm weight on k");
}

/// eps 1e-6 -> 1e-3 changes q by about 1e-3 * eps-ratio of |q| (~4e-4 RMS
/// here), under the 5e-3 bf16 contract: only the f64 formula check sees it.
#[test]
fn eps_changed_to_1e_3_fails_the_f64_formula_check() {
    let f = Faults {
        fused_eps_override: Some(1e-3),
        ..Default::default()
    };
    op_check_fails(Numerics::F64, f, "eps 1e-3");
}

#[test]
fn the_clean_build_passes_the_same_checks() {
    let m = Model::open("synth:tiny").unwrap();
    let seq = prompt_and_continuation(&m, &PROMPT, 8).unwrap();
    for n in [Numerics::Bf16, Numerics::F64] {
        let (op, run) = cpu_parity(&m, n, Faults::default(), &seq).unwrap();
        assert!(op.pass && run.pass, "{}\n{}", op.to_text(), run.to_text());
    }
}

/// A one-ULP, run-dependent perturbation in the fused path: the fused
/// bitwise-stability check (distinct results over repeated runs) must flag it.
#[test]
fn a_one_ulp_perturbation_breaks_fused_bitwise_stability() {
    use lockstep::backend::AttnPath;
    use lockstep::jobs::envelope::cpu_envelope;
    let m = Model::open("synth:tiny").unwrap();
    let clean = cpu_envelope(
        &m,
        Numerics::Bf16,
        AttnPath::Fused,
        Faults::default(),
        &PROMPT,
        6,
    )
    .unwrap();
    assert_eq!(clean.distinct, 1, "{}", clean.to_text());
    let f = Faults {
        fused_one_ulp_flip: true,
        ..Default::default()
    };
    let bad = cpu_envelope(&m, Numerics::Bf16, AttnPath::Fused, f, &PROMPT, 6).unwrap();
    println!("{}", bad.to_text());
    assert!(
        bad.distinct > 1,
        "one-ULP flips went unnoticed:\n{}",
        bad.to_text()
    );
}

/// Bisection points at the planted bug: the q-norm weight applied to k in
/// the fused path shows first in layer 0's k.
#[test]
fn bisection_names_the_first_op_outside_tolerance() {
    use lockstep::backend::AttnPath;
    use lockstep::jobs::divergence::{investigate_divergence, Side};
    use lockstep::verify::divergence::Verdict;
    let m = Model::open("synth:tiny").unwrap();
    let good = Side {
        numerics: Numerics::Bf16,
        path: AttnPath::Graph,
        faults: Faults::default(),
    };
    let bad = Side {
        numerics: Numerics::Bf16,
        path: AttnPath::Fused,
        faults: Faults {
            fused_k_uses_q_norm: true,
            ..Default::default()
        },
    };
    let r = investigate_divergence(&m, &good, &bad, &PROMPT, 24).unwrap();
    let d = r.divergence.expect("a k-norm bug changes greedy output");
    assert!(matches!(d.verdict, Verdict::Regression { .. }), "{d:?}");
    let b = r.bisection.unwrap();
    println!("{}", b.to_text());
    assert_eq!(
        b.first_outside.as_deref(),
        Some("layer 0 k"),
        "{}",
        b.to_text()
    );
}

/// RoPE rotates q and k by their positions, so shifting every position by
/// one leaves q.k (which depends on the difference) unchanged: the bug is
/// invisible in greedy output and logits, and only the op-level check sees
/// it. This is why parity is checked per op, not only end to end.
#[test]
fn a_rope_shift_hides_from_greedy_output_but_not_from_the_op_check() {
    use lockstep::backend::AttnPath;
    use lockstep::jobs::divergence::{investigate_divergence, Side};
    let m = Model::open("synth:tiny").unwrap();
    let good = Side {
        numerics: Numerics::F64,
        path: AttnPath::Graph,
        faults: Faults::default(),
    };
    let bad = Side {
        numerics: Numerics::F64,
        path: AttnPath::Fused,
        faults: Faults {
            fused_rope_position_offset: 1,
            ..Default::default()
        },
    };
    let r = investigate_divergence(&m, &good, &bad, &PROMPT, 24).unwrap();
    assert_eq!(
        r.tokens_a, r.tokens_b,
        "the shift changed greedy output after all"
    );
    op_check_fails(Numerics::Bf16, bad.faults, "RoPE position + 1");
}

/// A planted fault that makes two runs part is located by the bisection
/// `verify` prints for a failing logits or containment row: the first op
/// outside tolerance (the faulty fused path's q at layer 0), with the faulty
/// side farther from truth there. The control: two clean runs of the same
/// path find nothing outside tolerance.
#[test]
fn the_bisection_of_a_failing_row_names_the_first_op_and_the_side_nearer_truth() {
    use lockstep::backend::cpu::CpuBackend;
    use lockstep::backend::AttnPath;
    use lockstep::jobs::divergence::bisect_pair;
    use lockstep::jobs::load;
    let m = Model::open("synth:tiny").unwrap();
    let seq = prompt_and_continuation(&m, &PROMPT, 8).unwrap();
    let faulty = bf16_with(
        &m,
        Faults {
            fused_rope_position_offset: 1,
            ..Default::default()
        },
    );
    let clean = load(&m, CpuBackend::new(Numerics::Bf16)).unwrap();
    let truth = load(&m, CpuBackend::new(Numerics::F64)).unwrap();
    let b = bisect_pair(
        (&faulty, AttnPath::Fused),
        (&clean, AttnPath::Graph),
        &truth,
        &seq,
    )
    .unwrap();
    println!("{}", b.to_text());
    assert_eq!(
        b.first_outside.as_deref(),
        Some("layer 0 q"),
        "{}",
        b.to_text()
    );
    let (a, g) = b.truth_at_first.expect("truth captured");
    assert!(a > 10.0 * g, "faulty {a:.3e} vs clean {g:.3e} from truth");
    assert!(b.verdict().contains("(b nearer)"), "{}", b.verdict());
    let same = bisect_pair(
        (&clean, AttnPath::Graph),
        (&clean, AttnPath::Graph),
        &truth,
        &seq,
    )
    .unwrap();
    assert!(same.first_outside.is_none(), "{}", same.to_text());
}

/// A bug only decode steps run (single-row RoPE one position too far, as a
/// decode-only kernel specialisation could have) fails the decode row that
/// `verify` carries, at the first decode step; the clean reference passes
/// it bitwise (the control), on both paths where the bug's op is used.
#[test]
fn a_decode_only_bug_fails_the_decode_row_and_the_clean_build_passes_it_bitwise() {
    use lockstep::backend::cpu::CpuBackend;
    use lockstep::backend::AttnPath;
    use lockstep::jobs::decode::decode_vs_teacher_forced;
    use lockstep::jobs::load;
    use lockstep::verify::decode::DecodeRule;
    let m = Model::open("synth:tiny").unwrap();
    let faulty = bf16_with(
        &m,
        Faults {
            decode_rope_position_offset: 1,
            ..Default::default()
        },
    );
    let r = decode_vs_teacher_forced(&faulty, &PROMPT, 12, AttnPath::Graph, DecodeRule::Bitwise)
        .unwrap();
    assert!(!r.pass, "{r:?}");
    assert_eq!(
        r.first_failure.map(|f| f.0),
        Some(1),
        "step 0 is the prefill, step 1 the first decode: {r:?}"
    );
    // The rule that tolerates rounding still catches it.
    let tol_rule = DecodeRule::RelRms {
        tolerance: lockstep::verify::tolerances::Tol::MlxBf16VsCpuBf16LogitsRelRms,
    };
    let r2 = decode_vs_teacher_forced(&faulty, &PROMPT, 12, AttnPath::Graph, tol_rule).unwrap();
    assert!(!r2.pass, "{r2:?}");
    let clean = load(&m, CpuBackend::new(Numerics::Bf16)).unwrap();
    for path in AttnPath::ALL {
        let r = decode_vs_teacher_forced(&clean, &PROMPT, 12, path, DecodeRule::Bitwise).unwrap();
        assert!(r.pass && r.bitwise_steps == 12, "{r:?}");
    }
}

/// Containment where the graph path has a real envelope (planted: one ULP
/// of its RoPE output moves from call to call, as atomics do on a GPU): a
/// fused path that rotates one position too far is outside it, at op level
/// and on greedy runs (tiny is confident enough that the fault moves its
/// logits without moving a token in 16 steps: the distance rule catches it).
#[test]
fn a_fused_fault_is_outside_a_jittering_graph_paths_envelope() {
    use lockstep::backend::cpu::CpuBackend;
    use lockstep::jobs::envelope::containment_of;
    use lockstep::jobs::{load, EnvelopeLevel};
    use lockstep::verify::envelope::ContainmentRule;
    let m = Model::open("synth:tiny").unwrap();
    let seq = prompt_and_continuation(&m, &PROMPT, 8).unwrap();
    let truth = load(&m, CpuBackend::new(Numerics::F64)).unwrap();
    let faulty = bf16_with(
        &m,
        Faults {
            graph_one_ulp_flip: true,
            fused_rope_position_offset: 1,
            ..Default::default()
        },
    );
    let op = containment_of(&faulty, Some(&truth), EnvelopeLevel::Op, &seq, 20).unwrap();
    assert!(
        op.graph.distinct > 1,
        "the planted jitter gives graph an envelope"
    );
    assert_eq!(op.rule, Some(ContainmentRule::Envelope));
    assert_eq!(op.contained, Some(false), "{}", op.verdict());
    let greedy = containment_of(
        &faulty,
        None,
        EnvelopeLevel::Greedy { steps: 16 },
        &PROMPT,
        10,
    )
    .unwrap();
    assert_eq!(greedy.contained, Some(false), "{}", greedy.verdict());
    assert!(!greedy.distance.within, "{}", greedy.verdict());
    // Without the jitter the graph path is deterministic: op level falls
    // back to truth (and the fault fails it), greedy runs are not judged.
    let steady = bf16_with(
        &m,
        Faults {
            fused_rope_position_offset: 1,
            ..Default::default()
        },
    );
    let op = containment_of(&steady, Some(&truth), EnvelopeLevel::Op, &seq, 3).unwrap();
    assert_eq!(op.rule, Some(ContainmentRule::TruthRelative));
    assert_eq!(op.contained, Some(false), "{}", op.verdict());
    let greedy = containment_of(
        &steady,
        None,
        EnvelopeLevel::Greedy { steps: 16 },
        &PROMPT,
        3,
    )
    .unwrap();
    assert_eq!(greedy.contained, None, "{}", greedy.verdict());
}

/// The layout row: a fused path whose output depends on a row's place in
/// the batch changes bits when the block moves by one row (by four, the
/// parity of every row is kept and nothing moves: the control of the
/// control); the clean path keeps every bit under every layout.
#[test]
fn a_batch_position_dependent_fused_path_fails_the_layout_row() {
    use lockstep::backend::cpu::CpuBackend;
    use lockstep::jobs::layout::fused_layout;
    use lockstep::jobs::load;
    let m = Model::open("synth:tiny").unwrap();
    let seq = prompt_and_continuation(&m, &PROMPT, 8).unwrap();
    let faulty = bf16_with(
        &m,
        Faults {
            fused_odd_row_flip: true,
            ..Default::default()
        },
    );
    let r = fused_layout(&faulty, &seq).unwrap();
    assert!(!r.pass, "{}", r.summary());
    let moved: Vec<&str> = r
        .perturbations
        .iter()
        .filter(|p| p.first_difference.is_some())
        .map(|p| p.what.as_str())
        .collect();
    assert_eq!(moved, ["rows at offset 1 of 5"], "{}", r.summary());
    let clean = load(&m, CpuBackend::new(Numerics::Bf16)).unwrap();
    let r = fused_layout(&clean, &seq).unwrap();
    assert!(r.pass, "{}", r.summary());
}
