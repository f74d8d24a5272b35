//! Every tolerance in the registry is explained in docs/tolerances.md with
//! its current value.

use lockstep::verify::tolerances::registry;

#[test]
fn every_registered_tolerance_is_documented_with_its_value() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/tolerances.md"))
        .unwrap();
    for t in &registry().tolerances {
        let heading = format!("### {} = ", t.name);
        let line = doc
            .lines()
            .find(|l| l.starts_with(&heading))
            .unwrap_or_else(|| panic!("docs/tolerances.md has no section for `{}`", t.name));
        let value: f64 = line[heading.len()..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            value, t.value,
            "docs/tolerances.md gives {} for `{}`, the registry {}",
            value, t.name, t.value
        );
        assert!(
            line.contains(&format!("({})", t.metric)),
            "metric of `{}` differs: {line}",
            t.name
        );
    }
}

#[test]
fn the_registry_refuses_duplicates_and_missing_reasons() {
    use lockstep::verify::tolerances::Registry;
    let dup = r#"{"schema":1,"tolerances":[{"name":"a","metric":"rms","value":1,"reason":"r"},{"name":"a","metric":"rms","value":2,"reason":"r"}]}"#;
    assert!(Registry::parse(dup)
        .unwrap_err()
        .to_string()
        .contains("defined twice"));
    let bare = r#"{"schema":1,"tolerances":[{"name":"a","metric":"rms","value":1,"reason":" "}]}"#;
    assert!(Registry::parse(bare).is_err());
}
