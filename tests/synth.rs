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
    assert_eq!(digest(&dir.join("model.safetensors")), "c9a82b29e6385152");
    let dir = synth_folder("synth-pinned-moe", "tiny-moe", 0);
    assert_eq!(digest(&dir.join("model.safetensors")), "ff2f4524a69e136b");
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
    assert!(qn.iter().any(|&w| w > 1.6), "no large q_norm channel");
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
