//! Synthetic presets: byte-identical per seed, the same model in memory, in
//! one file or in shards, and weights shaped like a trained checkpoint's.

mod common;
use common::{scratch, synth_folder};
use lockstep::backend::cpu::{CpuBackend, Numerics};
use lockstep::engine::Engine;
use lockstep::model::{synth::Synth, write_synth_folder, Model};

fn digest(path: &std::path::Path) -> String {
    format!(
        "{:016x}",
        xxhash_rust::xxh3::xxh3_64(&std::fs::read(path).unwrap())
    )
}

fn hash_of(spec: &str) -> String {
    Engine::load(&Model::open(spec).unwrap(), CpuBackend::new(Numerics::Bf16))
        .unwrap()
        .model_hash
}

#[test]
fn the_same_seed_writes_byte_identical_folders() {
    let a = synth_folder("synth-a", "tiny-moe", 7);
    let b = synth_folder("synth-b", "tiny-moe", 7);
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
            "{f}"
        );
    }
    let c = synth_folder("synth-c", "tiny-moe", 8);
    assert_ne!(
        digest(&a.join("model.safetensors")),
        digest(&c.join("model.safetensors"))
    );
}

/// Pins the generator across machines and releases: if this changes, the
/// generator changed, every reference and golden is stale, and
/// `GENERATOR_VERSION` must be bumped with them.
#[test]
fn the_generator_output_is_pinned_for_every_machine() {
    let dir = synth_folder("synth-pinned", "tiny", 0);
    assert_eq!(digest(&dir.join("model.safetensors")), "dbd44bec51a3a38f");
    let dir = synth_folder("synth-pinned-moe", "tiny-moe", 0);
    assert_eq!(digest(&dir.join("model.safetensors")), "02ca943ca8410393");
}

#[test]
fn in_memory_single_file_and_sharded_models_have_one_hash() {
    let single = synth_folder("synth-single", "tiny-moe", 0);
    let sharded = scratch("synth-sharded");
    write_synth_folder(&Synth::new("tiny-moe", 0).unwrap(), &sharded, Some(100_000)).unwrap();
    assert!(sharded.join("model.safetensors.index.json").exists());
    let shards = std::fs::read_dir(&sharded)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".safetensors")
        })
        .count();
    assert!(shards > 2, "{shards} shards");
    let h = hash_of("synth:tiny-moe:0");
    assert_eq!(h, hash_of(single.to_str().unwrap()));
    assert_eq!(h, hash_of(sharded.to_str().unwrap()));
    assert_ne!(h, hash_of("synth:tiny-moe:1"));
}

#[test]
fn weights_have_outlier_channels_and_norms_away_from_one() {
    let m = Model::open("synth:qwen3-0.6b:0").unwrap();
    let s = m.synth().unwrap();
    assert!(s.outlier_channels.len() >= 2);
    let embed = m.tensor("model.embed_tokens.weight").unwrap().to_f32_vec();
    let h = m.config.hidden_size;
    let col_rms = |c: usize| {
        let v: f64 = (0..m.config.vocab_size)
            .map(|r| (embed[r * h + c] as f64).powi(2))
            .sum();
        (v / m.config.vocab_size as f64).sqrt()
    };
    let normal: Vec<usize> = (0..h)
        .filter(|c| !s.outlier_channels.contains(c))
        .take(32)
        .collect();
    let typical = normal.iter().map(|&c| col_rms(c)).sum::<f64>() / normal.len() as f64;
    for &c in &s.outlier_channels {
        assert!(
            col_rms(c) > 6.0 * typical,
            "channel {c}: {} vs {typical}",
            col_rms(c)
        );
    }
    assert!(
        (typical - 1.0 / (h as f64).sqrt()).abs() < 0.05 / (h as f64).sqrt(),
        "embedding std {typical}"
    );
    let qn = m
        .tensor("model.layers.3.self_attn.q_norm.weight")
        .unwrap()
        .to_f32_vec();
    let far = qn.iter().filter(|&&w| !(0.9..=1.1).contains(&w)).count();
    assert!(
        far > qn.len() / 2,
        "q_norm weights hug 1.0: {far}/{}",
        qn.len()
    );
    assert!(
        qn.iter().all(|&w| (0.39..1.21).contains(&w)),
        "q_norm outside [0.4, 1.2)"
    );
    let ln = m
        .tensor("model.layers.3.input_layernorm.weight")
        .unwrap()
        .to_f32_vec();
    assert!(
        ln.iter().any(|&w| w > 2.0),
        "no large input_layernorm channel"
    );
    for &c in &s.outlier_channels {
        assert!(ln[c] < 0.2, "outlier channel {c} has norm weight {}", ln[c]);
    }
}

#[test]
fn the_text_prompt_path_tokenizes_with_the_folder_tokenizer() {
    let dir = synth_folder("synth-tokenizer", "tiny", 0);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .args([
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--prompt",
            "Hi!",
            "--max-tokens",
            "2",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("prompt   [72, 105, 33]"), "{stdout}");
}

/// Rewrites every tensor of a bf16 folder in another dtype.
fn convert_folder(src: &std::path::Path, dst_name: &str, dtype: &str) -> std::path::PathBuf {
    use lockstep::model::safetensors::{write_file, Dtype, SafeTensors, TensorSpec};
    let dst = scratch(dst_name);
    std::fs::copy(src.join("config.json"), dst.join("config.json")).unwrap();
    let st = SafeTensors::open_dir(src).unwrap();
    let (dt, size) = match dtype {
        "F32" => (Dtype::F32, 4),
        _ => (Dtype::F16, 2),
    };
    let specs: Vec<TensorSpec> = st
        .names()
        .map(|n| TensorSpec {
            name: n.clone(),
            dtype: dt,
            shape: st.get(n).unwrap().0.shape.clone(),
        })
        .collect();
    write_file(
        &dst.join("model.safetensors"),
        &specs,
        &Default::default(),
        |t| {
            let v = st.get(&t.name).unwrap().0.to_f32_vec();
            let mut out = Vec::with_capacity(v.len() * size);
            for x in v {
                match dt {
                    Dtype::F32 => out.extend_from_slice(&x.to_le_bytes()),
                    _ => out.extend_from_slice(&half::f16::from_f32(x).to_le_bytes()),
                }
            }
            Ok(out)
        },
    )
    .unwrap();
    dst
}

#[test]
fn f32_and_f16_checkpoints_load_and_run() {
    use lockstep::engine::generate::GenerateOptions;
    let bf16 = synth_folder("dtype-bf16", "tiny", 0);
    let f32_dir = convert_folder(&bf16, "dtype-f32", "F32");
    let f16_dir = convert_folder(&bf16, "dtype-f16", "F16");
    let opts = GenerateOptions {
        max_tokens: 6,
        keep_logits: true,
        ..Default::default()
    };
    let run = |dir: &std::path::Path| {
        Engine::load(
            &Model::open(dir.to_str().unwrap()).unwrap(),
            CpuBackend::new(Numerics::F64),
        )
        .unwrap()
        .generate(&common::PROMPT, &opts, &mut |_| {})
        .unwrap()
    };
    let (a, b, c) = (run(&bf16), run(&f32_dir), run(&f16_dir));
    // bf16 values are exact in f32: the same arithmetic, the same logits.
    assert_eq!(a.steps, b.steps);
    assert_ne!(
        a.fingerprint.model_hash, b.fingerprint.model_hash,
        "dtype is part of the identity"
    );
    // f16 has fewer exponent bits: small weights lose precision, logits move a little.
    let d = lockstep::verify::metrics::diff_f32(
        c.steps[0].logits.as_ref().unwrap(),
        a.steps[0].logits.as_ref().unwrap(),
    );
    assert!(d.rel_rms < 1e-2, "f16 checkpoint drifted: {d:?}");
}

/// Decoding through a synthetic folder's byte-level tokenizer gives back the
/// bytes of the text (multi-byte UTF-8 included), and names the ids past its
/// 256 entries that the text leaves out (the model's vocabulary is larger).
#[test]
fn byte_level_decoding_round_trips_text_and_names_ids_it_cannot_show() {
    use lockstep::model::tokenizer::{decode, encode};
    let dir = synth_folder("synth-decode", "tiny", 0);
    let tp = dir.join("tokenizer.json");
    let text = "héllo wörld ✓";
    let ids = encode(&tp, text).unwrap();
    assert_eq!(ids.len(), text.len(), "one id per byte: {ids:?}");
    let d = decode(&tp, &ids).unwrap();
    assert_eq!(d.text, text);
    assert!(d.unknown.is_empty());
    let mut with_unknown = ids.clone();
    with_unknown.insert(2, 300);
    let d = decode(&tp, &with_unknown).unwrap();
    assert_eq!((d.unknown, d.vocabulary), (vec![300], 256));
    // The control: the text without 300 is still the text.
    assert_eq!(d.text, text);
}
