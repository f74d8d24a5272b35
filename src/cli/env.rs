//! `lockstep env`: the numeric fingerprint of every backend in this build.

use super::args::print_json;
use lockstep::backend::cpu::CpuBackend;
use lockstep::backend::mlx::MlxBackend;
use lockstep::backend::{Backend, BackendKind, DeviceInfo};
use lockstep::error::Result;
use lockstep::ident::Numerics;
use lockstep::jobs::accelerator::open_cuda;
use std::collections::BTreeMap;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    json: bool,
}

/// The fingerprints of the CPU reference (both arithmetics), CUDA (when
/// `with_cuda`) and MLX on each device where they open here, and why the
/// others did not.
pub fn backend_infos(with_cuda: bool) -> (Vec<DeviceInfo>, BTreeMap<BackendKind, String>) {
    let mut infos: Vec<DeviceInfo> = Numerics::ALL
        .iter()
        .map(|&n| CpuBackend::new(n).device_info())
        .collect();
    let mut missing = BTreeMap::new();
    if with_cuda {
        match open_cuda(Default::default()) {
            Ok(b) => infos.push(b.device_info()),
            Err(e) => {
                missing.insert(BackendKind::Cuda, e.to_string());
            }
        }
    }
    for (kind, b) in [
        (BackendKind::Mlx, MlxBackend::new()),
        (BackendKind::MlxGpu, MlxBackend::gpu()),
    ] {
        match b {
            Ok(b) => infos.push(b.device_info()),
            Err(e) => {
                missing.insert(kind, e.to_string());
            }
        }
    }
    (infos, missing)
}

pub fn run(a: Args) -> Result<()> {
    let (infos, missing) = backend_infos(true);
    if a.json {
        print_json(&serde_json::json!({
            "lockstep_version": env!("CARGO_PKG_VERSION"),
            "backends": infos,
            "unavailable": missing,
        }));
        return Ok(());
    }
    println!("lockstep {}", env!("CARGO_PKG_VERSION"));
    for i in &infos {
        println!("{}/{}  device: {}", i.backend, i.numerics, i.device);
        for (k, v) in &i.details {
            println!("    {k}: {v}");
        }
    }
    for (b, e) in missing {
        println!("{b}: unavailable ({e})");
    }
    Ok(())
}
