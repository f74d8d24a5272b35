//! `lockstep compare-reference`: a backend (the CPU reference by default)
//! against a transformers reference file.

use super::args::{print_json, BackendArg, DeviceArg};
use lockstep::error::{Error, Result};
use lockstep::model::Model;
use lockstep::verify::reference::Reference;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    reference: PathBuf,
    /// Model folder or synth spec; defaults to synth:PRESET:SEED from the file.
    #[arg(long)]
    model: Option<String>,
    /// Where to run: the CPU reference (in the arithmetic the file's dtype
    /// calls for: f64 truth for float64/float32, bf16 for bfloat16) or an
    /// accelerator (bfloat16 files only; it computes in bf16).
    #[arg(long, value_enum, default_value = "cpu")]
    backend: BackendArg,
    /// MLX's device (with --backend mlx).
    #[arg(long, value_enum)]
    device: Option<DeviceArg>,
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let r = Reference::load(&a.reference)?;
    let spec = a
        .model
        .unwrap_or_else(|| format!("synth:{}:{}", r.preset, r.seed));
    let numerics = r.dtype.numerics();
    if a.backend != BackendArg::Cpu && numerics != lockstep::ident::Numerics::Bf16 {
        return Err(Error::invalid(
            "--backend",
            format!(
                "a {} reference is judged against the f64 truth, which only the CPU reference computes; use --backend cpu, or a bfloat16 reference",
                r.dtype
            ),
        ));
    }
    let target = lockstep::jobs::fixture::Target::new(
        a.backend.into(),
        a.device.map(Into::into),
        numerics,
        Default::default(),
    )?;
    let report =
        lockstep::jobs::oracle::compare_with_reference_on(&r, &Model::open(&spec)?, target)?;
    if a.json {
        print_json(&report);
    } else {
        print!("{}", report.to_text());
    }
    if report.pass {
        Ok(())
    } else {
        Err(Error::invalid(
            a.reference.display().to_string(),
            "outside tolerance",
        ))
    }
}
