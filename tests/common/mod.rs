//! Helpers shared by the integration tests.
#![allow(dead_code)]

use lockstep::backend::cpu::{CpuBackend, Numerics};
use lockstep::engine::generate::GenerateOptions;
use lockstep::engine::Engine;
use lockstep::model::{synth::Synth, write_synth_folder, Model};
use std::path::{Path, PathBuf};

/// A fresh, empty folder under the target dir, unique per test name.
pub fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `synth:PRESET:SEED` as a folder named `name`.
pub fn synth_folder(name: &str, preset: &str, seed: u64) -> PathBuf {
    let dir = scratch(name);
    write_synth_folder(&Synth::new(preset, seed).unwrap(), &dir, None).unwrap();
    dir
}

pub fn cpu_engine(spec: &str, numerics: Numerics) -> Engine<CpuBackend> {
    Engine::load(&Model::open(spec).unwrap(), CpuBackend::new(numerics)).unwrap()
}

pub const PROMPT: [u32; 8] = [1, 17, 42, 99, 3, 250, 7, 8];

/// The prompt plus 24 greedy tokens of the CPU bf16 reference: the same
/// input for every backend, with positions well past the prompt.
pub fn sequence(spec: &str) -> Vec<u32> {
    let run = cpu_engine(spec, Numerics::Bf16)
        .generate(
            &PROMPT,
            &GenerateOptions {
                max_tokens: 24,
                ..Default::default()
            },
            &mut |_| {},
        )
        .unwrap();
    [PROMPT.to_vec(), run.tokens].concat()
}

/// The negative control of a golden check: changes the golden's token at
/// its first confident step (margin >= 0.5, so no near-tie can excuse it)
/// and returns that step.
pub fn edit_a_confident_step(g: &mut lockstep::verify::golden::GoldenBody) -> usize {
    let step = g
        .steps
        .iter()
        .position(|s| s.margin >= 0.5)
        .expect("a confident step");
    g.tokens[step] += 1;
    g.steps[step].token += 1;
    step
}
