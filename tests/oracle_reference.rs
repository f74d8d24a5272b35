//! The CPU reference against Hugging Face transformers (golden/reference/,
//! written on a GPU by ci/oracle.py): f64 truth vs float32 and the
//! bf16-faithful mode vs bfloat16, teacher-forced per step and greedy.

use lockstep::jobs::oracle::compare_with_reference;
use lockstep::model::Model;
use lockstep::verify::reference::Reference;
use std::path::Path;

fn check(file: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("golden/reference")
        .join(file);
    let r = Reference::load(&path).unwrap();
    assert!(
        r.loading_info["keys"]
            .as_object()
            .unwrap()
            .values()
            .all(|v| v.as_array().unwrap().is_empty()),
        "transformers reported missing/unexpected weights for {file}: {}",
        r.loading_info
    );
    let model = Model::open(&format!("synth:{}:{}", r.preset, r.seed)).unwrap();
    let report = compare_with_reference(&r, &model).unwrap();
    println!("{file}\n{}", report.to_text());
    assert!(report.pass, "{file}:\n{}", report.to_text());
}

#[test]
fn cpu_f64_matches_transformers_float32_on_tiny() {
    check("tiny-float32.json");
}

#[test]
fn cpu_bf16_matches_transformers_bfloat16_on_tiny() {
    check("tiny-bfloat16.json");
}

#[test]
fn cpu_f64_matches_transformers_float32_on_tiny_moe() {
    check("tiny-moe-float32.json");
}

#[test]
fn cpu_bf16_matches_transformers_bfloat16_on_tiny_moe() {
    check("tiny-moe-bfloat16.json");
}

#[test]
fn cpu_f64_matches_transformers_float32_on_qwen3_0_6b() {
    check("qwen3-0.6b-float32.json");
}

#[test]
fn cpu_bf16_matches_transformers_bfloat16_on_qwen3_0_6b() {
    check("qwen3-0.6b-bfloat16.json");
}

/// The comparison must be able to fail: a reference of another model is
/// refused, and a reference whose logits were edited fails the tolerance.
#[test]
fn a_reference_of_another_model_or_edited_logits_is_refused() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/reference/tiny-float32.json");
    let r = Reference::load(&path).unwrap();
    let other = Model::open("synth:tiny:1").unwrap();
    let e = compare_with_reference(&r, &other).unwrap_err().to_string();
    assert!(e.contains("reference is for model"), "{e}");

    let mut edited = r.clone();
    for v in edited.steps[5].sample.iter_mut().step_by(7) {
        *v += 0.01;
    }
    let model = Model::open("synth:tiny:0").unwrap();
    let report = compare_with_reference(&edited, &model).unwrap();
    assert!(!report.pass, "edited logits passed:\n{}", report.to_text());
}

/// A reference file whose prompt is empty is refused on load, naming the
/// file, rather than reaching a comparison that indexes the prompt.
#[test]
fn a_reference_with_an_empty_prompt_is_refused() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/reference/tiny-float32.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&src).unwrap()).unwrap();
    v["prompt"] = serde_json::json!([]);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("empty-prompt-reference");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("reference.json");
    std::fs::write(&path, v.to_string()).unwrap();
    let e = Reference::load(&path).unwrap_err().to_string();
    assert!(
        e.contains("reference.json") && e.contains("prompt holds no tokens"),
        "{e}"
    );
}

/// A reference whose greedy tokens part from ours at a step that records
/// fewer than two top entries has no margin to excuse the change: the
/// comparison fails, and does not panic.
#[test]
fn a_divergence_at_a_step_without_two_top_entries_fails_without_a_panic() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/reference/tiny-float32.json");
    let mut r = Reference::load(&path).unwrap();
    let model = Model::open("synth:tiny:0").unwrap();
    // The control: unedited, it passes.
    assert!(compare_with_reference(&r, &model).unwrap().pass);
    r.tokens[3] = (r.tokens[3] + 1) % 512;
    r.steps[3].top.truncate(1);
    let report = compare_with_reference(&r, &model).unwrap();
    assert!(!report.pass, "{}", report.to_text());
}

/// The routing excuse of a reference comparison: a step moved past the
/// bound (planted: one reference step's logits scaled by 1.1) fails; our
/// run's routing decision within `moe_routing_near_tie_bf16` of a tie at
/// that step excuses it and leaves the later steps unjudged; a confident
/// decision there, or a near-tie at another step, excuses nothing.
#[test]
fn a_routing_near_tie_excuses_the_step_it_is_at_and_nothing_else() {
    use lockstep::backend::cpu::{CpuBackend, Numerics};
    use lockstep::engine::generate::GenerateOptions;
    use lockstep::verify::reference::{judge_with_ties, Reference};
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("golden/reference/tiny-moe-bfloat16.json");
    let mut r = Reference::load(&path).unwrap();
    let m = lockstep::model::Model::open("synth:tiny-moe").unwrap();
    let e = lockstep::jobs::load(&m, CpuBackend::new(Numerics::Bf16)).unwrap();
    let rows = e
        .teacher_forced(
            &r.teacher_tokens(),
            lockstep::backend::AttnPath::Graph,
            &mut Default::default(),
        )
        .unwrap();
    let teacher = rows[r.prompt.len() - 1..].to_vec();
    let opts = GenerateOptions {
        max_tokens: r.tokens.len(),
        ..Default::default()
    };
    let ours = e.generate(&r.prompt, &opts, &mut |_| {}).unwrap();
    let n = r.steps.len();
    assert!(judge_with_ties(&r, &teacher, &ours, &[]).unwrap().pass);
    for v in r.steps[5].sample.iter_mut() {
        *v *= 1.1;
    }
    let mut ties = vec![None; n];
    assert!(!judge_with_ties(&r, &teacher, &ours, &ties).unwrap().pass);
    ties[5] = Some((0.5, 1));
    assert!(
        !judge_with_ties(&r, &teacher, &ours, &ties).unwrap().pass,
        "a confident decision"
    );
    ties[5] = None;
    ties[4] = Some((1e-3, 1));
    assert!(
        !judge_with_ties(&r, &teacher, &ours, &ties).unwrap().pass,
        "a tie one step early"
    );
    ties[5] = Some((1e-3, 2));
    let rep = judge_with_ties(&r, &teacher, &ours, &ties).unwrap();
    assert!(rep.pass, "{}", rep.to_text());
    assert_eq!(rep.routing_near_tie, Some((5, 1e-3, 2)));
    assert!(rep.to_text().contains("not judged"));
}
