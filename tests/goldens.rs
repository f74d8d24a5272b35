//! The committed golden generations (golden/*.snap): fresh runs must match
//! them, token changes pass only at recorded near-ties, and the checker
//! refuses goldens of another model or prompt. Exact matches also go through
//! insta, so `cargo insta review` can take over when a golden changes.

mod common;

use lockstep::ident::BackendKind;
use lockstep::jobs::golden::{golden_cases, golden_regen, golden_runs, golden_set, under_ci};
use lockstep::verify::golden::{self, golden_path, GoldenOutcome};
use std::path::Path;

use common::{insta_assert, root};

#[test]
fn fresh_cpu_runs_match_the_committed_goldens() {
    for (now, _) in golden_runs(&golden_cases(BackendKind::Cpu)).unwrap() {
        let name = now.name();
        let path = golden_path(root(), &name);
        let golden = golden::load(&path).unwrap_or_else(|e| {
            panic!("{name}: {e}\n(write it with `cargo run --release -- golden regen`)")
        });
        match golden::compare(&golden, &now).unwrap() {
            GoldenOutcome::NearTie { step, margin, threshold } => eprintln!(
                "warning: {name}: tokens differ from step {step}, a recorded near-tie (margin {margin:.4} < {threshold})"
            ),
            // Identical passes here too; anything else fails with insta's diff
            // and leaves a .snap.new for `cargo insta review`.
            _ => insta_assert(&name, &now.render()),
        }
    }
}

fn a_golden() -> (golden::GoldenBody, golden::GoldenBody) {
    let g = golden::load(&golden_path(root(), "tiny__cpu__graph__bf16")).unwrap();
    (g.clone(), g)
}

#[test]
fn a_golden_edited_at_a_confident_step_fails_the_check() {
    let (mut g, now) = a_golden();
    let step = common::edit_a_confident_step(&mut g);
    let out = golden::compare(&g, &now).unwrap();
    assert!(
        matches!(out, GoldenOutcome::Regression { step: s, .. } if s == step),
        "{out:?}"
    );
    assert!(!out.passes());
}

#[test]
fn a_token_change_at_a_recorded_near_tie_passes_with_a_warning() {
    let (mut g, now) = a_golden();
    let step = g
        .steps
        .iter()
        .position(|s| s.margin < 0.125)
        .expect("a near-tie in the golden");
    g.tokens[step] = g.steps[step].top[1].0;
    let out = golden::compare(&g, &now).unwrap();
    assert!(
        matches!(out, GoldenOutcome::NearTie { .. }) && out.passes(),
        "{out:?}"
    );
}

#[test]
fn moved_values_with_unchanged_tokens_fail() {
    let (mut g, now) = a_golden();
    g.steps[3].top[2].1 += 0.001;
    assert_eq!(
        golden::compare(&g, &now).unwrap(),
        GoldenOutcome::ValuesMoved { step: 3 }
    );
}

#[test]
fn a_golden_of_another_model_or_prompt_is_refused_not_compared() {
    let (mut g, now) = a_golden();
    g.model_hash = "xxh3:00000000000000000000000000000000".into();
    let e = golden::compare(&g, &now).unwrap_err().to_string();
    assert!(e.contains("model hash") && e.contains("refusing"), "{e}");
    let (mut g, now) = a_golden();
    g.prompt.push(5);
    let e = golden::compare(&g, &now).unwrap_err().to_string();
    assert!(e.contains("prompt") && e.contains("refusing"), "{e}");
}

#[test]
fn a_corrupted_golden_is_an_error_naming_the_file() {
    let p = Path::new("golden/x.snap");
    let e = golden::parse_snap("---\nsource: x\n---\n{ not json", p)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("golden/x.snap") && e.contains("not a valid golden"),
        "{e}"
    );
    let e = golden::parse_snap("{}", p).unwrap_err().to_string();
    assert!(e.contains("no `---` header"), "{e}");
}

#[test]
fn regeneration_is_refused_under_ci() {
    // Only meaningful where CI is set; elsewhere the check is the function's
    // own condition, exercised by the CLI test below.
    if under_ci() {
        let e = golden_regen(root(), None).unwrap_err().to_string();
        assert!(e.contains("refusing"), "{e}");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .args(["golden", "regen", "--root", "/nonexistent-root-for-test"])
        .env("CI", "true")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to rewrite goldens under CI"),
        "{err}"
    );
}

#[test]
fn regeneration_writes_every_golden_and_reports_changes() {
    if under_ci() {
        // Regeneration refuses under CI by design (tested above); this test
        // then checks the refusal instead of the writing.
        assert!(golden_regen(Path::new(env!("CARGO_TARGET_TMPDIR")), None).is_err());
        return;
    }
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR")).join("golden-regen");
    let _ = std::fs::remove_dir_all(&tmp);
    let first = golden_regen(&tmp, None).unwrap();
    assert!(first.iter().all(|l| l.ends_with(": new")), "{first:?}");
    // Every backend this build can run: the MLX goldens too with `--features mlx`.
    assert_eq!(first.len(), golden_set(None).unwrap().len());
    // The regenerated files equal the committed ones, byte for byte in the body.
    let cases = golden_cases(BackendKind::Cpu);
    for (now, _) in golden_runs(&cases[..2]).unwrap() {
        let written = golden::load(&golden_path(&tmp, &now.name())).unwrap();
        let committed = golden::load(&golden_path(root(), &now.name())).unwrap();
        assert_eq!(written, committed);
    }
    let second = golden_regen(&tmp, None).unwrap();
    assert!(
        second.iter().all(|l| l.ends_with(": unchanged")),
        "{second:?}"
    );
    // No temporary files are left behind.
    let leftovers: Vec<_> = std::fs::read_dir(tmp.join("golden"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn a_golden_of_another_preset_is_refused() {
    let (mut g, now) = a_golden();
    g.preset = "tiny-moe".into();
    let e = golden::compare(&g, &now).unwrap_err().to_string();
    assert!(e.contains("preset") && e.contains("refusing"), "{e}");
}
