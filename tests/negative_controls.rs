//! Negative controls: planted bugs that the named checks must catch. A
//! harness that cannot fail proves nothing.

mod common;
use common::PROMPT;
use lockstep::backend::cpu::{Faults, Numerics};
use lockstep::jobs::{cpu_parity, prompt_and_continuation};
use lockstep::model::Model;

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
