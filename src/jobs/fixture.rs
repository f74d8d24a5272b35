//! Loading: engines with a progress bar, and the fixture of one default
//! model that a `verify` run (or a test) shares across its rows, so each
//! engine is built once per model and numerics rather than once per row.

use super::{CONTINUATION_TOKENS, DEFAULT_PROMPT};
use crate::backend::cpu::CpuBackend;
use crate::backend::Backend;
use crate::engine::generate::GenerateOptions;
use crate::engine::Engine;
use crate::error::Result;
use crate::ident::Numerics;
use crate::model::Model;
use crate::progress::Progress;

/// Loads `model` on `backend` with a progress bar.
pub fn load<B: Backend>(model: &Model, backend: B) -> Result<Engine<B>> {
    let mut p = Progress::new("loading", crate::model::layout::tensor_count(&model.config));
    Engine::load_with_progress(model, backend, &mut |d, _| p.set(d))
}

/// Loads `model` on the CPU reference with a progress bar.
pub fn load_cpu(model: &Model, numerics: Numerics) -> Result<Engine<CpuBackend>> {
    load(model, CpuBackend::new(numerics))
}

/// `prompt` followed by `extra` greedy tokens of `e`'s graph path: a
/// deterministic sequence reaching positions past the prompt.
pub fn continuation<B: Backend>(e: &Engine<B>, prompt: &[u32], extra: usize) -> Result<Vec<u32>> {
    let opts = GenerateOptions {
        max_tokens: extra,
        ..Default::default()
    };
    let run = e.generate(prompt, &opts, &mut |_| {})?;
    Ok([prompt.to_vec(), run.tokens].concat())
}

/// One model with the CPU reference loaded in both arithmetics, and the
/// sequence every check of that model runs on.
pub struct Fixture {
    pub model: Model,
    /// The bf16-faithful reference.
    pub bf16: Engine<CpuBackend>,
    /// f64 truth over the same weights.
    pub truth: Engine<CpuBackend>,
    /// `DEFAULT_PROMPT` and `CONTINUATION_TOKENS` greedy tokens of `bf16`.
    pub seq: Vec<u32>,
}

impl Fixture {
    /// `synth:PRESET:0`.
    pub fn preset(preset: &str) -> Result<Self> {
        Self::open(&format!("synth:{preset}:0"))
    }

    pub fn open(spec: &str) -> Result<Self> {
        let model = Model::open(spec)?;
        let bf16 = load_cpu(&model, Numerics::Bf16)?;
        let truth = load_cpu(&model, Numerics::F64)?;
        let seq = continuation(&bf16, &DEFAULT_PROMPT, CONTINUATION_TOKENS)?;
        Ok(Fixture {
            model,
            bf16,
            truth,
            seq,
        })
    }

    /// The model's name in case ids.
    pub fn name(&self) -> &str {
        &self.bf16.model_name
    }

    /// The CPU reference in `numerics`.
    pub fn cpu(&self, numerics: Numerics) -> &Engine<CpuBackend> {
        match numerics {
            Numerics::Bf16 => &self.bf16,
            Numerics::F64 => &self.truth,
        }
    }
}

/// Where a command runs: a backend with the settings it honours. MLX and
/// CUDA compute in bf16 only.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    Cpu(Numerics),
    Mlx(crate::backend::mlx::MlxDevice),
    Cuda(crate::backend::cuda::CudaOptions),
}

impl Target {
    /// The target for `backend` in `numerics`: refused, naming the option,
    /// where the backend cannot compute in it. `BackendKind::Mlx` is MLX on
    /// `device`, by default its default device (`MlxBackend::default_device`:
    /// the GPU of a CUDA or Metal build of libmlx).
    pub fn new(
        backend: crate::ident::BackendKind,
        device: Option<crate::backend::mlx::MlxDevice>,
        numerics: Numerics,
        cuda: crate::backend::cuda::CudaOptions,
    ) -> Result<Self> {
        use crate::backend::mlx::{MlxBackend, MlxDevice};
        use crate::ident::BackendKind;
        match (backend, device) {
            (BackendKind::Mlx, _) | (_, None) => {}
            (BackendKind::MlxGpu, Some(MlxDevice::Gpu)) => {}
            (b, Some(d)) => {
                return Err(crate::error::Error::invalid(
                    "--device",
                    format!(
                        "picks MLX's device (--backend mlx); {b} has no device {}",
                        d.name()
                    ),
                ))
            }
        }
        if backend != BackendKind::Cpu && numerics != Numerics::Bf16 {
            return Err(crate::error::Error::invalid(
                "--numerics",
                format!(
                    "the {backend} backend computes in bf16 only; {numerics} is the CPU reference's"
                ),
            ));
        }
        Ok(match backend {
            BackendKind::Cpu => Target::Cpu(numerics),
            BackendKind::Mlx => Target::Mlx(device.unwrap_or_else(MlxBackend::default_device)),
            BackendKind::MlxGpu => Target::Mlx(MlxDevice::Gpu),
            BackendKind::Cuda => Target::Cuda(cuda),
        })
    }
}

/// Work to do on an engine of whichever backend a `Target` names.
pub trait EngineJob {
    type Output;
    fn run<B: Backend>(self, e: &Engine<B>) -> Result<Self::Output>;
}

/// Opens `target`, loads `model` on it and runs `job`.
pub fn run_on<J: EngineJob>(model: &Model, target: Target, job: J) -> Result<J::Output> {
    match target {
        Target::Cpu(n) => job.run(&load_cpu(model, n)?),
        Target::Mlx(d) => job.run(&load(
            model,
            crate::backend::mlx::MlxBackend::on_device(d)?,
        )?),
        Target::Cuda(o) => job.run(&load(model, super::accelerator::open_cuda(o)?)?),
    }
}
