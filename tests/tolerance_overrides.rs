//! `--tolerances FILE`: a run's overrides of the committed registry. One
//! test in its own binary: overrides are process-wide and applied once,
//! before any tolerance is read.

use lockstep::verify::tolerances::{apply_overrides, overrides, registry, tol, Tol};

#[test]
fn overrides_are_checked_applied_once_before_use_and_bite() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("tolerance-overrides");
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    // Refused, each naming what is wrong, and none of them applied.
    for (text, says) in [
        (
            r#"{"tolerances":[{"name":"no_such","value":1,"reason":"r"}]}"#,
            "not in the registry",
        ),
        (
            r#"{"tolerances":[{"name":"fused_vs_graph_rms","value":-1,"reason":"r"}]}"#,
            "non-negative",
        ),
        (
            r#"{"tolerances":[{"name":"fused_vs_graph_rms","value":1,"reason":" "}]}"#,
            "reason",
        ),
        (
            r#"{"tolerances":[{"name":"fused_vs_graph_rms","value":1,"reason":"r"},{"name":"fused_vs_graph_rms","value":2,"reason":"r"}]}"#,
            "twice",
        ),
        (
            r#"{"tolerances":[{"name":"fused_vs_graph_rms","value":1,"reason":"r","extra":0}]}"#,
            "extra",
        ),
    ] {
        let e = apply_overrides(&write("bad.json", text))
            .unwrap_err()
            .to_string();
        assert!(e.contains(says), "{text}: {e}");
        assert!(overrides().is_empty());
    }
    let good = write(
        "good.json",
        r#"{"tolerances":[{"name":"fused_vs_graph_rms","value":1e-4,"reason":"tighter, to see how far below the contract tiny sits"}]}"#,
    );
    let applied = apply_overrides(&good).unwrap();
    assert_eq!(applied.len(), 1);
    assert_eq!((applied[0].committed, applied[0].value), (5e-3, 1e-4));
    assert_eq!(tol(Tol::FusedVsGraphRms), 1e-4);
    assert!(registry()
        .get("fused_vs_graph_rms")
        .unwrap()
        .reason
        .starts_with("OVERRIDDEN"));
    // The other values are the committed ones.
    assert_eq!(tol(Tol::TruthRelativeFactor), 2.0);
    // Once per process, and not after the registry has been read.
    assert!(apply_overrides(&good)
        .unwrap_err()
        .to_string()
        .contains("before any tolerance"));
    // It bites: tiny's op-level parity (3.4e-3 fused vs graph) fails the
    // tightened bound.
    let m = lockstep::model::Model::open("synth:tiny").unwrap();
    let seq = lockstep::jobs::continuation(
        &lockstep::jobs::load_cpu(&m, lockstep::ident::Numerics::Bf16).unwrap(),
        &lockstep::jobs::DEFAULT_PROMPT,
        24,
    )
    .unwrap();
    let (op, _) = lockstep::jobs::parity::cpu_parity(
        &m,
        lockstep::ident::Numerics::Bf16,
        Default::default(),
        &seq,
    )
    .unwrap();
    assert!(!op.pass, "{}", op.to_text());
}
