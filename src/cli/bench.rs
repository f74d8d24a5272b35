//! `lockstep bench`: decode speed, batch 1: CUDA per path x mode x graphs,
//! MLX per path x what its fused path runs; with `--batch`, CUDA's batched
//! decode per batch size x path x mode.

use super::args::{
    print_json, BackendArg, MlxFusedArg, MlxMoeRoutingArg, ModeArg, OnOffArg, PathArg, ProductsArg,
};
use lockstep::backend::cuda::{Products, ReductionMode};
use lockstep::backend::mlx::{MlxBackend, MlxDevice};
use lockstep::bench::{cuda_bench, mlx_bench, Grid, Timing};
use lockstep::error::{Error, Result};
use lockstep::model::Model;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = "synth:qwen3-0.6b")]
    model: String,
    #[arg(long, value_enum, default_value = "cuda")]
    backend: BackendArg,
    #[arg(long, value_enum, value_delimiter = ',', default_value = "fused,graph")]
    paths: Vec<PathArg>,
    /// CUDA reduction modes to time (default: deterministic,fast).
    #[arg(long, value_enum, value_delimiter = ',')]
    modes: Option<Vec<ModeArg>>,
    /// Which units compute deterministic mode's products, each timed
    /// (default: cuda-cores; fast mode keeps its own).
    #[arg(long, value_enum, value_delimiter = ',')]
    products: Option<Vec<ProductsArg>>,
    /// CUDA graphs settings to time: on, off or both (default: on).
    #[arg(long, value_enum, value_delimiter = ',')]
    graphs: Option<Vec<OnOffArg>>,
    /// What MLX's fused path runs, each timed (default: the compiled chain,
    /// and lockstep's kernels where the backend has them).
    #[arg(long, value_enum, value_delimiter = ',')]
    mlx_fused: Option<Vec<MlxFusedArg>>,
    /// Whether MLX's greedy decode queues step i+1 before reading token i:
    /// on, off or both, each timed (default: on).
    #[arg(long, value_enum, value_delimiter = ',')]
    mlx_pipeline: Option<Vec<OnOffArg>>,
    /// Where MLX's MoE layers route, each timed on an MoE model: host,
    /// device or both (default: host).
    #[arg(long, value_enum, value_delimiter = ',')]
    mlx_moe_routing: Option<Vec<MlxMoeRoutingArg>>,
    /// Batched decode instead (CUDA): the batch sizes to time, e.g.
    /// 1,8,32,64; each sequence is prefilled alone, then all decode
    /// together, per path and mode.
    #[arg(long, value_delimiter = ',')]
    batch: Option<Vec<usize>>,
    #[arg(long, default_value_t = 16)]
    prompt_tokens: usize,
    #[arg(long, default_value_t = 32)]
    warmup: usize,
    #[arg(long, default_value_t = 256)]
    tokens: usize,
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    #[arg(long)]
    json: bool,
    /// Also time each CUDA configuration that records its steps with each
    /// kernel family left out of the recorded step, and report what each
    /// family costs inside the step (launch gaps included).
    #[arg(long)]
    split: bool,
    /// Also write the JSON report to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    let timing = Timing {
        prompt_tokens: a.prompt_tokens,
        warmup: a.warmup,
        tokens: a.tokens,
        repeats: a.repeats,
    };
    let paths: Vec<_> = a.paths.into_iter().map(Into::into).collect();
    let model = Model::open(&a.model)?;
    let cuda_settings_given = a.modes.is_some() || a.graphs.is_some() || a.products.is_some();
    let modes: Vec<ReductionMode> = a.modes.map_or(ReductionMode::ALL.to_vec(), |m| {
        m.into_iter().map(Into::into).collect()
    });
    let products: Vec<Products> = a.products.map_or(vec![Products::CudaCores], |p| {
        p.into_iter().map(Into::into).collect()
    });
    if a.split && (!matches!(a.backend, BackendArg::Cuda) || a.batch.is_some()) {
        return Err(Error::invalid(
            "--split",
            "leaves kernel families out of the CUDA backend's recorded batch-1 decode step",
        ));
    }
    if a.split
        && a.graphs
            .as_ref()
            .is_some_and(|g| g.iter().all(|&g| !bool::from(g)))
    {
        return Err(Error::invalid(
            "--split",
            "needs recorded steps (--graphs on)",
        ));
    }
    if let Some(batches) = a.batch {
        if !matches!(a.backend, BackendArg::Cuda) || a.graphs.is_some() {
            return Err(Error::invalid(
                "--batch",
                "times the CUDA backend's batched decode (no --graphs: a batched step is not recorded)",
            ));
        }
        let settings = lockstep::bench::cuda_settings(&modes, &products);
        let rep =
            lockstep::bench::batch::cuda_batch_bench(&model, &batches, &paths, &settings, timing)?;
        return show(&rep, rep.to_text(), a.out, a.json);
    }
    let rep = match a.backend {
        BackendArg::Cuda => {
            if a.mlx_fused.is_some() || a.mlx_pipeline.is_some() || a.mlx_moe_routing.is_some() {
                return Err(Error::invalid(
                    "--mlx-fused/--mlx-pipeline/--mlx-moe-routing",
                    "apply to --backend mlx",
                ));
            }
            let grid = Grid {
                paths,
                modes,
                products,
                graphs: a
                    .graphs
                    .map_or(vec![true], |g| g.into_iter().map(Into::into).collect()),
            };
            cuda_bench(&model, &grid, timing, a.split)?
        }
        BackendArg::Mlx | BackendArg::MlxGpu => {
            if cuda_settings_given {
                return Err(Error::invalid(
                    "--modes/--graphs/--products",
                    "are the CUDA backend's settings; MLX's are --mlx-fused and --mlx-pipeline",
                ));
            }
            let fused: Option<Vec<_>> =
                a.mlx_fused.map(|f| f.into_iter().map(Into::into).collect());
            let device = match a.backend {
                BackendArg::MlxGpu => MlxDevice::Gpu,
                _ => MlxBackend::default_device(),
            };
            let pipelined: Vec<bool> = a
                .mlx_pipeline
                .map_or(vec![true], |p| p.into_iter().map(Into::into).collect());
            let routing: Vec<_> = a.mlx_moe_routing.map_or(
                vec![lockstep::backend::mlx::MlxMoeRouting::default_for(device)],
                |r| r.into_iter().map(Into::into).collect(),
            );
            mlx_bench(
                &model,
                device,
                &paths,
                fused.as_deref(),
                &pipelined,
                &routing,
                timing,
            )?
        }
        BackendArg::Cpu => {
            return Err(Error::invalid(
                "--backend",
                "bench times the CUDA backend and MLX (the CPU reference is the oracle)",
            ))
        }
    };
    show(&rep, rep.to_text(), a.out, a.json)
}

/// Writes the report to `out` if asked, and prints it as JSON or text.
fn show<R: serde::Serialize>(
    rep: &R,
    text: String,
    out: Option<PathBuf>,
    json: bool,
) -> Result<()> {
    if let Some(path) = out {
        lockstep::util::write_json_atomically(&path, rep)?;
    }
    if json {
        print_json(rep);
    } else {
        print!("{text}");
    }
    Ok(())
}
