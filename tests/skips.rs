//! Skips are loud, and LOCKSTEP_REQUIRE_GPU / LOCKSTEP_REQUIRE_MLX turn them
//! into failures: proven here on a probe test run in a child process.

use lockstep::skip::{decide, skip, Need};
use std::process::Command;

#[test]
fn a_skip_says_why_and_a_required_skip_is_an_error() {
    assert_eq!(
        decide(Need::Gpu, None, "t", "no GPU").unwrap(),
        "SKIPPED t: no GPU"
    );
    assert!(decide(Need::Gpu, Some("0"), "t", "no GPU").is_ok());
    let e = decide(Need::Mlx, Some("1"), "t", "no MLX").unwrap_err();
    assert!(
        e.contains("LOCKSTEP_REQUIRE_MLX=1") && e.contains("no MLX"),
        "{e}"
    );
}

/// Not a check by itself: the child process below runs it.
#[test]
fn skip_probe() {
    if std::env::var("LOCKSTEP_SKIP_PROBE").is_ok() {
        skip(Need::Gpu, "skip_probe", "probe for the skip mechanism");
        skip(Need::Mlx, "skip_probe", "probe for the skip mechanism");
    }
}

fn probe(var: Option<&str>) -> (bool, String) {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["--exact", "skip_probe"])
        .env("LOCKSTEP_SKIP_PROBE", "1");
    c.env_remove("LOCKSTEP_REQUIRE_GPU")
        .env_remove("LOCKSTEP_REQUIRE_MLX");
    if let Some(v) = var {
        c.env(v, "1");
    }
    let out = c.output().unwrap();
    // A skip line goes to stderr; a failing test's panic to the harness's
    // report on stdout.
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    (out.status.success(), text)
}

#[test]
fn require_variables_turn_skips_into_failures() {
    let (ok, err) = probe(None);
    assert!(
        ok && err.contains("SKIPPED skip_probe: probe for the skip mechanism"),
        "{err}"
    );
    for var in ["LOCKSTEP_REQUIRE_GPU", "LOCKSTEP_REQUIRE_MLX"] {
        let (ok, err) = probe(Some(var));
        assert!(!ok, "{var}=1 did not fail the skipping test:\n{err}");
        assert!(err.contains(&format!("{var}=1 forbids skipping")), "{err}");
    }
}

/// `verify` lists a backend this machine cannot run as skipped, and as a
/// failure (saying which variable forbids the skip) when the matching
/// LOCKSTEP_REQUIRE_* variable is 1.
#[test]
fn verify_rows_of_a_required_backend_fail_instead_of_skipping() {
    use lockstep::ident::BackendKind;
    use lockstep::verify::case::{Case, Op};
    use lockstep::verify::checks::skipped_backend_row;
    let qkv = |b| Case::new(Op::Qkv, b);
    use lockstep::verify::summary::{failed, Status};
    let row = skipped_backend_row(Need::Gpu, None, qkv(BackendKind::Cuda), "no driver");
    assert_eq!(row.status, Status::Skipped("no driver".into()));
    let row = skipped_backend_row(Need::Gpu, Some("1"), qkv(BackendKind::Cuda), "no driver");
    assert_eq!(row.status, Status::Fail);
    assert!(
        row.detail
            .contains("LOCKSTEP_REQUIRE_GPU=1 forbids skipping")
            && row.detail.contains("no driver"),
        "{}",
        row.detail
    );
    let table = lockstep::verify::summary::to_text(std::slice::from_ref(&row));
    assert!(
        table.contains("FAIL") && table.contains("FAILED: SKIPPED qkv()@cuda: no driver"),
        "{table}"
    );
    assert_eq!(failed(&[row]), 1);
    let row = skipped_backend_row(Need::Mlx, Some("1"), qkv(BackendKind::Mlx), "not compiled");
    assert!(
        row.detail.contains("LOCKSTEP_REQUIRE_MLX=1"),
        "{}",
        row.detail
    );
}
