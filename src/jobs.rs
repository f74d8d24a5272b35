//! Jobs that drive the engine to produce recorded runs and hand them to
//! `verify`: the glue the CLI and the tests share. Verification itself never
//! touches a backend.

use crate::backend::cpu::{CpuBackend, Numerics};
use crate::backend::AttnPath;
use crate::engine::generate::GenerateOptions;
use crate::engine::Engine;
use crate::error::Result;
use crate::model::Model;
use crate::progress::Progress;
use crate::verify::reference::{judge, Reference, ReferenceReport};

/// Loads `model` on the CPU reference with a progress bar.
pub fn load_cpu(model: &Model, numerics: Numerics) -> Result<Engine<CpuBackend>> {
    let mut p = Progress::new("loading", model.expected_tensors().len());
    Engine::load_with_progress(model, CpuBackend::new(numerics), &mut |d, _| p.set(d))
}

/// The CPU arithmetic a transformers reference is compared with: f64 truth
/// for float32 references, the bf16-faithful mode for bfloat16 ones.
pub fn numerics_for(reference: &Reference) -> Numerics {
    if reference.dtype == "float32" {
        Numerics::F64
    } else {
        Numerics::Bf16
    }
}

/// Runs the CPU reference teacher-forced on the reference's tokens and
/// greedily from its prompt, and judges both against the reference.
pub fn compare_with_reference(reference: &Reference, model: &Model) -> Result<ReferenceReport> {
    let engine = load_cpu(model, numerics_for(reference))?;
    let logits = engine.teacher_forced(
        &reference.teacher_tokens(),
        AttnPath::Graph,
        &mut Default::default(),
    )?;
    let opts = GenerateOptions {
        max_tokens: reference.tokens.len(),
        ..Default::default()
    };
    let mut p = Progress::new("greedy", reference.tokens.len());
    let ours = engine.generate(&reference.prompt, &opts, &mut |i| p.set(i))?;
    judge(reference, &logits[reference.prompt.len() - 1..], &ours)
}
