//! Fuzzing of every parser of outside input with proptest over bytes:
//! safetensors headers and offsets, config.json, the sharded index, golden
//! files (and their comparison), transformers reference files (and their
//! judgement) and the tolerance registry. Inputs are mutations of a committed seed
//! corpus (tests/fuzz_corpus/) and raw random bytes. The property: every
//! input ends in Ok or an Err, never a panic, and quickly.
//!
//! CI runs 256 cases per target; a campaign sets LOCKSTEP_FUZZ_CASES (see
//! docs/fuzzing.md for the recorded campaigns).

use lockstep::model::config::Qwen3Config;
use lockstep::model::safetensors::{parse_header, SafeTensors};
use lockstep::verify::golden::{compare, parse_snap, GoldenOutcome};
use lockstep::verify::tolerances::Registry;
use proptest::prelude::*;
use std::path::Path;

fn corpus(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fuzz_corpus")
            .join(name),
    )
    .unwrap()
}

/// Fixed unless LOCKSTEP_FUZZ_SEED asks for another: CI runs the same inputs.
fn rng_seed() -> proptest::test_runner::RngSeed {
    let s = std::env::var("LOCKSTEP_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0xf022);
    proptest::test_runner::RngSeed::Fixed(s)
}

fn cases() -> u32 {
    std::env::var("LOCKSTEP_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Delete(usize, usize),
    Insert(usize, Vec<u8>),
    Truncate(usize),
    /// Overwrite 8 bytes with a little-endian u64 (header lengths, offsets).
    Word(usize, u64),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Flip(i, b)),
        (any::<usize>(), 0usize..64).prop_map(|(i, n)| Edit::Delete(i, n)),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, v)| Edit::Insert(i, v)),
        any::<usize>().prop_map(Edit::Truncate),
        (
            any::<usize>(),
            prop_oneof![Just(0u64), Just(u64::MAX), Just(1 << 40), any::<u64>()]
        )
            .prop_map(|(i, w)| Edit::Word(i, w)),
    ]
}

fn apply(mut b: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let n = b.len().max(1);
        match e {
            Edit::Flip(i, x) => {
                if !b.is_empty() {
                    b[i % n] ^= x | 1;
                }
            }
            Edit::Delete(i, k) => {
                let s = i % n;
                let end = (s + k).min(b.len());
                if s < end {
                    b.drain(s..end);
                }
            }
            Edit::Insert(i, v) => {
                let at = i % (b.len() + 1);
                b.splice(at..at, v.iter().copied());
            }
            Edit::Truncate(i) => b.truncate(i % n),
            Edit::Word(i, w) => {
                if b.len() >= 8 {
                    let at = i % (b.len() - 7);
                    b[at..at + 8].copy_from_slice(&w.to_le_bytes());
                }
            }
        }
    }
    b
}

/// Mutated bytes of a seed, or fresh random bytes.
fn input(seed: &'static str) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::collection::vec(edit(), 1..6).prop_map(move |e| apply(corpus(seed), &e)),
        1 => prop::collection::vec(any::<u8>(), 0..256),
    ]
}

/// JSON-aware mutation: replace or remove one field of a JSON object.
fn json_field_edit(seed: &'static str) -> impl Strategy<Value = String> {
    let values = prop_oneof![
        Just(serde_json::Value::Null),
        Just(serde_json::json!(-1)),
        Just(serde_json::json!(1e300)),
        Just(serde_json::json!(u64::MAX)),
        Just(serde_json::json!("text")),
        Just(serde_json::json!([])),
        Just(serde_json::json!({})),
        Just(serde_json::json!(true)),
        Just(serde_json::json!(0)),
        Just(serde_json::json!(1u64 << 40)),
    ];
    (any::<usize>(), prop::option::of(values)).prop_map(move |(k, v)| {
        let mut obj: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&corpus(seed)).unwrap();
        let key = obj.keys().nth(k % obj.len()).unwrap().clone();
        match v {
            None => {
                obj.remove(&key);
            }
            Some(v) => {
                obj.insert(key, v);
            }
        }
        serde_json::to_string(&obj).unwrap()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), rng_seed: rng_seed(), failure_persistence: None, .. ProptestConfig::default() })]

    #[test]
    fn safetensors_headers_never_panic(bytes in input("small.safetensors")) {
        if let Ok((start, entries, _)) = parse_header(&bytes, Path::new("fuzz.safetensors")) {
            // Whatever was accepted must lie inside the file.
            for e in entries.values() {
                prop_assert!(start + e.end <= bytes.len() && e.start <= e.end);
            }
        }
    }

    #[test]
    fn configs_never_panic(text in prop_oneof![
        input("config-dense.json").prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        json_field_edit("config-dense.json"),
        json_field_edit("config-moe.json"),
    ]) {
        if let Ok(c) = Qwen3Config::from_json_str(&text, Path::new("config.json")) {
            // An accepted config must be usable: its tensor list is computable.
            let _ = lockstep::model::layout::parameter_count(&c);
        }
    }

    /// The seed is `tiny__cpu__graph__bf16`, read under its own name so that
    /// accepted mutations reach the comparison, which must not panic either.
    #[test]
    fn golden_files_never_panic(bytes in input("golden.snap")) {
        let path = Path::new("golden/tiny__cpu__graph__bf16.snap");
        if let Ok(g) = parse_snap(&String::from_utf8_lossy(&bytes), path) {
            prop_assert_eq!(compare(&g, &g).unwrap(), GoldenOutcome::Identical);
            let seed = parse_snap(&String::from_utf8_lossy(&corpus("golden.snap")), path).unwrap();
            let _ = compare(&seed, &g);
            let _ = compare(&g, &seed);
        }
    }

    #[test]
    fn tolerance_registries_never_panic(bytes in prop_oneof![
        input("../../tolerances.json"),
        json_field_edit("../../tolerances.json").prop_map(String::into_bytes),
    ]) {
        let _ = Registry::parse(&String::from_utf8_lossy(&bytes));
    }
}

/// transformers reference files: mutations of a committed one; whatever
/// loads is judged against a real run of the CPU reference (computed once),
/// and the judgement must end in a report or an error, never a panic.
#[test]
fn reference_files_never_panic_through_their_judgement() {
    use lockstep::backend::cpu::{CpuBackend, Numerics};
    use lockstep::engine::generate::GenerateOptions;
    use lockstep::engine::Engine;
    use lockstep::verify::reference::{judge, Reference};
    let seed_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/reference/tiny-float32.json");
    let seed = std::fs::read(&seed_path).unwrap();
    let r = Reference::load(&seed_path).unwrap();
    let e = Engine::load(
        &lockstep::model::Model::open("synth:tiny").unwrap(),
        CpuBackend::new(Numerics::F64),
    )
    .unwrap();
    let teacher = e
        .teacher_forced(
            &r.teacher_tokens(),
            lockstep::backend::AttnPath::Graph,
            &mut Default::default(),
        )
        .unwrap();
    let teacher = teacher[teacher.len() - r.steps.len()..].to_vec();
    let opts = GenerateOptions {
        max_tokens: r.tokens.len(),
        ..Default::default()
    };
    let ours = e.generate(&r.prompt, &opts, &mut |_| {}).unwrap();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-reference");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("ref.json");
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: cases() / 4,
        rng_seed: rng_seed(),
        failure_persistence: None,
        ..Default::default()
    });
    // Byte edits (mostly refused as JSON) and structural ones that keep the
    // JSON valid and reach the judgement: a top-level field replaced or
    // removed, one step's `top` cut, a token changed, a list shortened.
    let parsed: serde_json::Value = serde_json::from_slice(&seed).unwrap();
    let structural = (0usize..6, any::<usize>(), any::<u32>()).prop_map(move |(kind, i, x)| {
        let mut v = parsed.clone();
        let n = v["steps"].as_array().unwrap().len();
        let top_keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        match kind {
            0 => v["steps"][i % n]["top"]
                .as_array_mut()
                .unwrap()
                .truncate(x as usize % 3),
            1 => v["tokens"][i % n] = (x % 600).into(),
            2 => v["steps"].as_array_mut().unwrap().truncate(i % (n + 1)),
            3 => v["tokens"].as_array_mut().unwrap().truncate(i % (n + 1)),
            4 => v[&top_keys[i % top_keys.len()]] = serde_json::json!(x),
            _ => {
                v.as_object_mut()
                    .unwrap()
                    .remove(&top_keys[i % top_keys.len()]);
            }
        }
        serde_json::to_vec(&v).unwrap()
    });
    let bytes = prop_oneof![
        prop::collection::vec(edit(), 1..6).prop_map(move |e| apply(seed.clone(), &e)),
        structural,
    ];
    let judged = std::cell::Cell::new(0usize);
    runner
        .run(&bytes, |b| {
            std::fs::write(&file, b).unwrap();
            if let Ok(r) = Reference::load(&file) {
                let _ = judge(&r, &teacher, &ours);
                judged.set(judged.get() + 1);
            }
            Ok(())
        })
        .unwrap();
    // The control: the campaign is not vacuous, some inputs reach judgement.
    assert!(judged.get() > 0, "no mutated reference loaded");
    println!("{} mutated references loaded and judged", judged.get());
}

/// The sharded index: mutations of a real index over real shards.
#[test]
fn sharded_indexes_never_panic() {
    use lockstep::model::{synth::Synth, write_synth_folder};
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-index");
    let _ = std::fs::remove_dir_all(&dir);
    write_synth_folder(&Synth::new("tiny-moe", 0).unwrap(), &dir, Some(150_000)).unwrap();
    let index = dir.join("model.safetensors.index.json");
    let seed = std::fs::read(&index).unwrap();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: cases() / 4,
        rng_seed: rng_seed(),
        failure_persistence: None,
        ..Default::default()
    });
    let strat = prop::collection::vec(edit(), 1..6);
    runner
        .run(&strat, |edits| {
            std::fs::write(&index, apply(seed.clone(), &edits)).unwrap();
            let _ = SafeTensors::open_dir(&dir);
            Ok(())
        })
        .unwrap();
}

/// Dumps (docs/dump-format.md): byte mutations of a real manifest and of its
/// tensors file; whatever `Dump::open` accepts then goes through `bisect`
/// against the clean dump and through the judgement of `compare --theirs`
/// (against the clean dump as reference and truth), which must not panic.
/// Fails if no mutation opens (the target would test nothing).
#[test]
fn dumps_never_panic_through_bisect_and_judgement() {
    use lockstep::backend::cpu::{CpuBackend, Numerics};
    use lockstep::backend::AttnPath;
    use lockstep::engine::dump::{Dump, MANIFEST, TENSORS};
    use lockstep::engine::Engine;
    use lockstep::model::Model;
    let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let (clean, dir) = (root.join("fuzz-dump-clean"), root.join("fuzz-dump"));
    let _ = std::fs::remove_dir_all(&clean);
    let e = Engine::load(
        &Model::open("synth:tiny-moe").unwrap(),
        CpuBackend::new(Numerics::Bf16),
    )
    .unwrap();
    lockstep::jobs::trace::trace_to_dir(
        &e,
        &[1, 7, 42],
        AttnPath::Graph,
        Default::default(),
        &clean,
    )
    .unwrap();
    let good = Dump::open(&clean, &e.config, &e.model_hash).unwrap();
    let seeds = [
        std::fs::read(clean.join(MANIFEST)).unwrap(),
        std::fs::read(clean.join(TENSORS)).unwrap(),
    ];
    std::fs::create_dir_all(&dir).unwrap();
    let opened = std::cell::Cell::new(0usize);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: cases() / 4,
        rng_seed: rng_seed(),
        failure_persistence: None,
        ..Default::default()
    });
    let strat = (0usize..2, prop::collection::vec(edit(), 1..4));
    runner
        .run(&strat, |(which, edits)| {
            for (i, name) in [MANIFEST, TENSORS].iter().enumerate() {
                let bytes = if i == which {
                    apply(seeds[i].clone(), &edits)
                } else {
                    seeds[i].clone()
                };
                std::fs::write(dir.join(name), bytes).unwrap();
            }
            if let Ok(d) = Dump::open(&dir, &e.config, &e.model_hash) {
                opened.set(opened.get() + 1);
                let _ = lockstep::verify::bisect::bisect(&d, &good, Some(&good));
                let _ = lockstep::verify::bisect::judge_theirs(&d, &good, &good);
            }
            Ok(())
        })
        .unwrap();
    println!("{} of the mutated dumps opened", opened.get());
    assert!(opened.get() > 0, "no mutated dump opened");
}
