//! Properties of the engine that every comparison relies on.

mod common;
use common::{cpu_engine, PROMPT};
use lockstep::backend::cpu::Numerics;
use lockstep::backend::AttnPath;
use lockstep::engine::generate::GenerateOptions;

/// A row's logits do not depend on how many rows are computed with it:
/// teacher-forced prefill and step-by-step decode agree bit for bit.
#[test]
fn prefill_and_incremental_decode_give_bitwise_identical_logits() {
    for spec in ["synth:tiny", "synth:tiny-moe"] {
        for numerics in [Numerics::Bf16, Numerics::F64] {
            for path in [AttnPath::Graph, AttnPath::Fused] {
                let e = cpu_engine(spec, numerics);
                let opts = GenerateOptions {
                    max_tokens: 12,
                    path,
                    keep_logits: true,
                    ..Default::default()
                };
                let run = e.generate(&PROMPT, &opts, &mut |_| {}).unwrap();
                let mut seq = PROMPT.to_vec();
                seq.extend(&run.tokens[..11]);
                let tf = e
                    .teacher_forced(&seq, path, &mut Default::default())
                    .unwrap();
                for (i, step) in run.steps.iter().enumerate() {
                    let row: Vec<f32> =
                        tf[PROMPT.len() - 1 + i].iter().map(|&v| v as f32).collect();
                    assert_eq!(
                        step.logits.as_deref().unwrap(),
                        row.as_slice(),
                        "{spec} {} {}: step {i} differs between decode and prefill",
                        numerics.name(),
                        path.name()
                    );
                }
            }
        }
    }
}

#[test]
fn the_same_run_twice_is_bitwise_identical_on_the_cpu() {
    let e = cpu_engine("synth:tiny-moe", Numerics::Bf16);
    let opts = GenerateOptions {
        max_tokens: 16,
        keep_logits: true,
        ..Default::default()
    };
    let a = e.generate(&PROMPT, &opts, &mut |_| {}).unwrap();
    let b = e.generate(&PROMPT, &opts, &mut |_| {}).unwrap();
    assert_eq!(a, b);
}

#[test]
fn a_prompt_id_outside_the_vocabulary_is_refused() {
    let e = cpu_engine("synth:tiny", Numerics::Bf16);
    let err = e
        .generate(&[1, 512], &GenerateOptions::default(), &mut |_| {})
        .unwrap_err();
    assert!(
        err.to_string().contains("512") && err.to_string().contains("vocab_size 512"),
        "{err}"
    );
}

#[test]
fn generating_past_max_position_embeddings_is_refused_up_front() {
    let e = cpu_engine("synth:tiny", Numerics::Bf16);
    let opts = GenerateOptions {
        max_tokens: 40960,
        ..Default::default()
    };
    let err = e.generate(&PROMPT, &opts, &mut |_| {}).unwrap_err();
    assert!(
        err.to_string().contains("max_position_embeddings 40960"),
        "{err}"
    );
}

#[test]
fn greedy_picks_the_lowest_index_among_equal_logits() {
    use lockstep::logits::top_k_of;
    let top = top_k_of(&[0.5, 2.0, -1.0, 2.0, 1.0], 3);
    assert_eq!(top, vec![(1, 2.0), (3, 2.0), (4, 1.0)]);
}

#[test]
fn the_verify_command_passes_and_prints_one_table() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .arg("verify")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("parity-op") && stdout.contains("oracle") && stdout.contains("0 failed"),
        "{stdout}"
    );
}

#[test]
fn a_recorded_run_keeps_hidden_states_on_request_and_round_trips_through_json() {
    let e = cpu_engine("synth:tiny", Numerics::Bf16);
    let opts = GenerateOptions {
        max_tokens: 3,
        keep_hidden: true,
        keep_logits: true,
        ..Default::default()
    };
    let run = e.generate(&PROMPT, &opts, &mut |_| {}).unwrap();
    let h = run.hidden.as_ref().unwrap();
    assert_eq!((h.len(), h[0].len(), h[0][0].len()), (3, 4, 64));
    let back: lockstep::engine::record::RecordedRun =
        serde_json::from_str(&serde_json::to_string(&run).unwrap()).unwrap();
    assert_eq!(back, run);
    assert_eq!(run.fingerprint.label(), "cpu/bf16/graph");
    assert!(run.fingerprint.model_hash.starts_with("xxh3:"));
}
