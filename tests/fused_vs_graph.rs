//! CPU reference: the fused path (packed QKV + q/k RMSNorm + RoPE in one op,
//! its own accumulation order) against the graph path and f64 truth, at op,
//! layer and logits level, for every preset CI runs, in both numerics modes.

mod common;
use common::{prompt_and_continuation, PROMPT};
use lockstep::backend::cpu::{Faults, Numerics};
use lockstep::jobs::parity::cpu_parity;
use lockstep::model::Model;

fn parity(spec: &str, numerics: Numerics) {
    let m = Model::open(spec).unwrap();
    let seq = prompt_and_continuation(&m, &PROMPT, 24).unwrap();
    let (op, run) = cpu_parity(&m, numerics, Faults::default(), &seq).unwrap();
    println!("{}\n{}", op.to_text(), run.to_text());
    assert!(op.pass, "{}", op.to_text());
    assert!(run.pass, "{}", run.to_text());
    if numerics == Numerics::Bf16 {
        // The fused op rounds once; the transformers-faithful graph path
        // rounds after every step. Truth must side with fused on q and k.
        common::assert_fused_nearer_truth_on_q_and_k(&op);
        assert!(
            op.worst_fused_vs_graph_rms() > 0.0,
            "fused equals graph bit for bit: not a distinct path"
        );
    }
}

#[test]
fn fused_qkv_layers_and_logits_match_graph_on_tiny_bf16() {
    parity("synth:tiny", Numerics::Bf16);
}

#[test]
fn fused_qkv_layers_and_logits_match_graph_on_tiny_moe_bf16() {
    parity("synth:tiny-moe", Numerics::Bf16);
}

#[test]
fn fused_matches_graph_to_rounding_in_f64_truth_mode() {
    parity("synth:tiny", Numerics::F64);
    parity("synth:tiny-moe", Numerics::F64);
}
