//! The committed golden generations (golden/*.snap): fresh runs must match
//! them, token changes pass only at recorded near-ties, and the checker
//! refuses goldens of another model or prompt. Exact matches also go through
//! insta, so `cargo insta review` can take over when a golden changes.

mod common;

use lockstep::ident::BackendKind;
use lockstep::jobs::golden::{
    against_committed, golden_cases, golden_regen, golden_runs, golden_set, under_ci,
};
use lockstep::verify::golden::{self, golden_path, GoldenOutcome};
use std::path::Path;

use common::{insta_assert, root};

#[test]
fn fresh_cpu_runs_match_the_committed_goldens() {
    for (now, fp) in golden_runs(&golden_cases(BackendKind::Cpu)).unwrap() {
        let name = now.name();
        // The policy of `golden check` and `verify` (against_committed).
        let out = against_committed(root(), &now, &fp).unwrap_or_else(|e| {
            panic!("{name}: {e}\n(write it with `cargo run --release -- golden regen`)")
        });
        match out {
            o @ (GoldenOutcome::NearTie { .. } | GoldenOutcome::TokensOnly { .. }) => {
                eprintln!("warning: {name}: {}", o.describe())
            }
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
fn moved_values_with_unchanged_tokens_fail_naming_the_first_value() {
    let (mut g, now) = a_golden();
    let (id, v) = g.steps[3].top[2];
    g.steps[3].top[2].1 += 0.001;
    let out = golden::compare(&g, &now).unwrap();
    assert_eq!(
        out,
        GoldenOutcome::ValuesMoved {
            step: 3,
            entry: 2,
            token: Some(id),
            recorded: v + 0.001,
            now: v,
        }
    );
    assert!(!out.passes());
    assert!(
        out.describe().contains(&format!("token {id}")),
        "{}",
        out.describe()
    );
    // A margin alone moving is found too.
    let (mut g, now) = a_golden();
    g.steps[5].margin += 0.0001;
    assert!(matches!(
        golden::compare(&g, &now).unwrap(),
        GoldenOutcome::ValuesMoved {
            step: 5,
            token: None,
            ..
        }
    ));
}

/// The committed file's text with its body edited by `edit`.
fn edited_file(name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let text = std::fs::read_to_string(golden_path(root(), name)).unwrap();
    let end = text[4..].find("\n---\n").unwrap() + 4 + 5;
    let mut body: serde_json::Value = serde_json::from_str(&text[end..]).unwrap();
    edit(&mut body);
    format!(
        "{}{}\n",
        &text[..end],
        serde_json::to_string_pretty(&body).unwrap()
    )
}

#[test]
fn an_edited_or_truncated_golden_file_is_refused_naming_the_field() {
    let name = "tiny__cpu__graph__bf16";
    let path = golden_path(root(), name);
    // The control: the committed file, re-serialised unedited, validates.
    golden::parse_snap(&edited_file(name, |_| {}), &path).unwrap();
    type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "field `steps`",
            Box::new(|b| b["steps"] = serde_json::json!([])),
        ),
        (
            "field `steps`",
            Box::new(|b| {
                b["steps"].as_array_mut().unwrap().truncate(3);
            }),
        ),
        (
            "field `tokens`",
            Box::new(|b| {
                b["tokens"] = serde_json::json!([]);
                b["steps"] = serde_json::json!([]);
            }),
        ),
        (
            "steps[2].margin",
            Box::new(|b| b["steps"][2]["margin"] = serde_json::json!(-0.5)),
        ),
        (
            "steps[4].margin",
            Box::new(|b| b["steps"][4]["margin"] = serde_json::json!(3.0)),
        ),
        (
            "steps[1].top",
            Box::new(|b| b["steps"][1]["top"].as_array_mut().unwrap().swap(1, 2)),
        ),
        (
            "steps[0].top",
            Box::new(|b| b["steps"][0]["top"].as_array_mut().unwrap().swap(0, 1)),
        ),
        (
            "steps[0].top",
            Box::new(|b| b["steps"][0]["top"] = serde_json::json!([])),
        ),
        (
            "steps[3].step",
            Box::new(|b| b["steps"][3]["step"] = serde_json::json!(7)),
        ),
        (
            "steps[6].token",
            Box::new(|b| {
                let t = b["tokens"][6].as_u64().unwrap();
                b["tokens"][6] = serde_json::json!((t + 1) % 512);
            }),
        ),
        (
            "the body is golden tiny__cpu__fused__bf16",
            Box::new(|b| b["path"] = serde_json::json!("fused")),
        ),
    ];
    for (want, edit) in cases {
        let e = golden::parse_snap(&edited_file(name, edit), &path)
            .expect_err(want)
            .to_string();
        assert!(
            e.contains(&path.display().to_string()) && e.contains(want),
            "wanted {want:?} in: {e}"
        );
    }
    // The header must say what the body says.
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("  backend: \"cpu\"", "  backend: \"mlx\"");
    let e = golden::parse_snap(&text, &path).unwrap_err().to_string();
    assert!(e.contains("info.backend"), "{e}");
}

#[test]
fn a_token_change_past_the_recorded_steps_fails_without_a_panic() {
    let (mut g, mut now) = a_golden();
    g.steps.truncate(4);
    now.tokens[10] = (now.tokens[10] + 1) % 512;
    let out = golden::compare(&g, &now).unwrap();
    assert!(
        matches!(out, GoldenOutcome::Regression { step: 10, .. }),
        "{out:?}"
    );
    // And with the tokens unchanged, the missing records are moved values.
    let (mut g, now) = a_golden();
    g.steps.truncate(4);
    assert!(matches!(
        golden::compare(&g, &now).unwrap(),
        GoldenOutcome::ValuesMoved { step: 4, .. }
    ));
}

#[test]
fn values_are_judged_only_on_the_device_class_the_golden_was_recorded_on() {
    let path = golden_path(root(), "tiny__cpu__graph__bf16");
    let file = golden::load_file(&path).unwrap();
    let here = file
        .device_class()
        .expect("a CPU golden names its architecture");
    assert!(here.starts_with("cpu on "), "{here}");
    let mut now = file.body.clone();
    now.steps[3].top[1].1 += 0.01;
    // Same class: a moved value fails.
    let same = golden::compare_on(&file, &now, Some(&here)).unwrap();
    assert!(
        matches!(same, GoldenOutcome::ValuesMoved { step: 3, .. }) && !same.passes(),
        "{same:?}"
    );
    // Another class: values are not judged, and the outcome says so.
    let other = golden::compare_on(&file, &now, Some("cpu on aarch64")).unwrap();
    assert!(
        matches!(other, GoldenOutcome::TokensOnly { .. }) && other.passes(),
        "{other:?}"
    );
    assert!(other.describe().contains("aarch64"), "{}", other.describe());
    // Tokens still are: a confident change fails on any class.
    let step = common::edit_a_confident_step(&mut now);
    let out = golden::compare_on(&file, &now, Some("cpu on aarch64")).unwrap();
    assert!(
        matches!(out, GoldenOutcome::Regression { step: s, .. } if s == step),
        "{out:?}"
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

/// Every committed golden, of every backend (those this machine cannot run
/// included), is a file `from_run` could have written.
#[test]
fn every_committed_golden_file_validates() {
    let mut names: Vec<_> = std::fs::read_dir(golden::golden_dir(root()))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "snap"))
        .collect();
    names.sort();
    assert!(names.len() >= 20, "{} goldens", names.len());
    for p in &names {
        let f = golden::load_file(p).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            f.device_class().is_some(),
            "{}: no device class in its header",
            p.display()
        );
    }
}

/// A golden checked out with CRLF line ends is the same golden.
#[test]
fn a_golden_with_crlf_line_ends_reads_as_the_same_golden() {
    let path = golden_path(root(), "tiny__cpu__graph__bf16");
    let text = std::fs::read_to_string(&path).unwrap();
    let crlf = text.replace('\n', "\r\n");
    assert_ne!(crlf, text);
    assert_eq!(
        golden::parse_snap(&crlf, &path).unwrap(),
        golden::parse_snap(&text, &path).unwrap()
    );
}
