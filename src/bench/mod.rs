//! Decode speed: same-process, warm, batch-1 greedy decoding timed per
//! configuration, with the weight-bytes roofline of the device's measured
//! copy bandwidth. Backend-neutral: the caller switches configurations.
//! Speed is only ever measured here (by `lockstep bench`), never in tests.

pub mod batch;
mod split;

pub use split::FamilyCost;

use crate::backend::cuda::{CudaOptions, KernelFamily, Products, ReductionMode};
use crate::backend::mlx::{MlxBackend, MlxFused, MlxMoeRouting};
use crate::backend::{AttnPath, Backend};
use crate::engine::record::Fingerprint;
use crate::engine::Engine;
use crate::error::Result;
use crate::model::layout::expected_tensors;
use crate::model::Qwen3Config;
use crate::progress::Progress;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Bytes of weights one decode step reads: every tensor except the
/// embedding table (one row of it), the lm_head once (the embedding when
/// tied); for MoE only the routed experts (top_k of each layer's experts).
pub fn weight_bytes_per_token(cfg: &Qwen3Config) -> usize {
    let mut elems = 0usize;
    for t in expected_tensors(cfg) {
        let n: usize = t.shape.iter().product();
        if t.name == "model.embed_tokens.weight" && !cfg.tie_word_embeddings {
            continue;
        }
        if t.name.contains(".mlp.experts.") {
            let m = cfg.moe.as_ref().expect("experts imply a moe config");
            // Counted as the active fraction of the layer's experts.
            elems += n * m.num_experts_per_tok / m.num_experts;
            continue;
        }
        elems += n;
    }
    2 * elems
}

/// Deterministic prompt ids of a given length for a vocabulary.
pub fn bench_prompt(len: usize, vocab: usize) -> Vec<u32> {
    (0..len).map(|i| ((1 + i * 7919) % vocab) as u32).collect()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchRow {
    pub path: AttnPath,
    /// CUDA rows: the reduction mode and whether decode steps replay a
    /// recorded graph.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ReductionMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cuda_graphs: Option<bool>,
    /// CUDA rows: which units computed the products (older reports lack
    /// it: CUDA cores).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub products: Option<Products>,
    /// MLX rows on the fused path: the compiled op chain or lockstep's CUDA
    /// kernel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlx_fused: Option<MlxFused>,
    /// MLX rows: whether step i+1 was queued before token i was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlx_pipelined: Option<bool>,
    /// MLX rows of an MoE model: where its MoE layers routed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlx_moe_routing: Option<MlxMoeRouting>,
    /// Decode tokens per second, best repeat and median repeat.
    pub best_tok_s: f64,
    pub median_tok_s: f64,
    pub best_ms_per_token: f64,
    /// Best tok/s as a percentage of the weight-bytes roofline.
    pub pct_of_roofline: f64,
    /// Every repeat's tok/s, in order.
    pub repeats_tok_s: Vec<f64>,
    /// Distinct greedy sequences over the repeats (1 when deterministic).
    pub distinct_outputs: usize,
    /// Device launches per timed token where the backend counts them
    /// (`Backend::launches_run`; older reports lack it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launches_per_token: Option<f64>,
    pub tokens: Vec<u32>,
    pub fingerprint: Fingerprint,
    /// CUDA rows of `--split`: the kernel family the recorded step left
    /// out (its tokens are nonsense; only its speed and launches count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub omitted: Option<KernelFamily>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchReport {
    pub model: String,
    pub model_hash: String,
    pub device: String,
    /// Streaming bandwidth, (read + write bytes) / time, GB/s: a
    /// device-to-device copy on CUDA, an elementwise op on MLX's device.
    pub copy_bandwidth_gb_s: f64,
    pub weight_bytes_per_token: usize,
    /// copy bandwidth / weight bytes per token.
    pub roofline_tok_s: f64,
    pub prompt_tokens: usize,
    pub warmup_tokens: usize,
    pub measured_tokens: usize,
    pub repeats: usize,
    /// Seconds from opening the weights to the last tensor resident on the
    /// device: a model that loads for minutes is a finding in itself
    /// (older reports lack it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_s: Option<f64>,
    pub rows: Vec<BenchRow>,
}

/// One timed greedy decode: tokens per second over the timed steps, the
/// tokens, and the launches per timed token where the backend counts them.
pub struct TimedRun {
    pub tok_s: f64,
    pub tokens: Vec<u32>,
    pub launches_per_token: Option<f64>,
}

/// One greedy decode of `warmup + tokens` steps after the prompt, timed
/// over the last `tokens` steps only.
pub fn time_once<B: Backend>(
    e: &Engine<B>,
    prompt: &[u32],
    path: AttnPath,
    warmup: usize,
    tokens: usize,
) -> Result<TimedRun> {
    let mut start = None;
    let mut end = None;
    // Launches counted as they are enqueued: a step's count is the same
    // at both ends of the timed steps, so the difference is exact.
    let (mut first, mut last) = (None, None);
    // Saturating: a count past any model's positions is refused by the
    // engine's own check, not wrapped.
    let steps = warmup.saturating_add(tokens).saturating_add(1);
    let out = e.decode_greedy(prompt, steps, path, &mut |i| {
        if i == warmup {
            start = Some(Instant::now());
            first = e.backend.launches_run();
        }
        if i == warmup + tokens {
            end = Some(Instant::now());
            last = e.backend.launches_run();
        }
    })?;
    let secs = match (start, end) {
        (Some(s), Some(t)) => (t - s).as_secs_f64(),
        _ => f64::NAN,
    };
    let launches_per_token = match (first, last) {
        (Some(a), Some(b)) if tokens > 0 => Some(b.saturating_sub(a) as f64 / tokens as f64),
        _ => None,
    };
    Ok(TimedRun {
        tok_s: tokens as f64 / secs,
        tokens: out,
        launches_per_token,
    })
}

/// What one row timed beside its path.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RowConfig {
    Cuda(CudaOptions),
    /// A CUDA configuration whose recorded steps leave one kernel family
    /// out (`--split`).
    CudaOmitting(CudaOptions, KernelFamily),
    /// `fused` is `None` on the graph path, which has no fused op.
    Mlx {
        fused: Option<MlxFused>,
        pipelined: bool,
        /// `None` for a dense model, which has no MoE layer.
        moe: Option<MlxMoeRouting>,
    },
}

/// One configuration's repeats: their speeds and tokens, and the launches
/// per token (the same on every repeat of one configuration).
#[derive(Debug, Clone, Default)]
pub struct Timed {
    pub speeds: Vec<f64>,
    pub outputs: Vec<Vec<u32>>,
    pub launches_per_token: Option<f64>,
}

pub fn row(
    path: AttnPath,
    config: RowConfig,
    timed: Timed,
    roofline: f64,
    fingerprint: Fingerprint,
) -> BenchRow {
    let Timed {
        speeds,
        outputs,
        launches_per_token,
    } = timed;
    let mut sorted = speeds.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let best = sorted.last().copied().unwrap_or(f64::NAN);
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN);
    let mut distinct = outputs.clone();
    distinct.sort();
    distinct.dedup();
    let omitted = match config {
        RowConfig::CudaOmitting(_, f) => Some(f),
        _ => None,
    };
    let (cuda, mlx_fused, mlx_pipelined, mlx_moe_routing) = match config {
        RowConfig::Cuda(o) | RowConfig::CudaOmitting(o, _) => (Some(o), None, None, None),
        RowConfig::Mlx {
            fused,
            pipelined,
            moe,
        } => (None, fused, Some(pipelined), moe),
    };
    BenchRow {
        path,
        mode: cuda.map(|o| o.mode),
        cuda_graphs: cuda.map(|o| o.graphs),
        products: cuda.map(|o| o.products),
        mlx_fused,
        mlx_pipelined,
        mlx_moe_routing,
        best_tok_s: best,
        median_tok_s: median,
        best_ms_per_token: 1e3 / best,
        pct_of_roofline: 100.0 * best / roofline,
        repeats_tok_s: speeds,
        distinct_outputs: distinct.len(),
        launches_per_token,
        tokens: outputs.into_iter().next().unwrap_or_default(),
        fingerprint,
        omitted,
    }
}

/// The configurations one `lockstep bench` times: every path x mode x
/// products x CUDA-graphs setting, in that nesting order; fast mode keeps
/// its own products whatever `products` holds (tensor-core products are a
/// deterministic-mode setting).
#[derive(Debug, Clone, PartialEq)]
pub struct Grid {
    pub paths: Vec<AttnPath>,
    pub modes: Vec<ReductionMode>,
    pub products: Vec<Products>,
    pub graphs: Vec<bool>,
}

impl Grid {
    pub fn configs(&self) -> Vec<(AttnPath, CudaOptions)> {
        let mut v = Vec::new();
        for &p in &self.paths {
            for o in cuda_settings(&self.modes, &self.products) {
                for &graphs in &self.graphs {
                    v.push((p, CudaOptions { graphs, ..o }));
                }
            }
        }
        v
    }
}

/// Every mode x products setting to time, in that nesting order:
/// deterministic mode with each of `products`, fast mode once with its own
/// (the reference a deterministic setting's price is measured against).
pub fn cuda_settings(modes: &[ReductionMode], products: &[Products]) -> Vec<CudaOptions> {
    let own = [Products::CudaCores];
    let mut v = Vec::new();
    for &mode in modes {
        let products = match mode {
            ReductionMode::Deterministic => products,
            ReductionMode::Fast => &own[..],
        };
        for &products in products {
            v.push(CudaOptions {
                mode,
                products,
                ..CudaOptions::default()
            });
        }
    }
    v
}

/// How long each configuration runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub prompt_tokens: usize,
    pub warmup: usize,
    pub tokens: usize,
    pub repeats: usize,
}

/// Times `configs` on `e` (`apply` sets each one up on the backend), in
/// one process on one loaded model, against the weight-bytes roofline of
/// `bandwidth` (GB/s, measured by the caller on the same device). Repeats
/// go round the configurations (repeat 1 of each, then repeat 2 of each,
/// ...), so that a drift of the machine over the run (clocks, a host-bound
/// step's scheduling) falls on every configuration alike rather than on
/// the ones timed last.
fn run_configs<B: Backend>(
    model: &crate::model::Model,
    e: &Engine<B>,
    load_s: f64,
    bandwidth: f64,
    configs: &[(AttnPath, RowConfig)],
    t: Timing,
    apply: impl Fn(&B, RowConfig) -> Result<()>,
) -> Result<BenchReport> {
    let weight_bytes = weight_bytes_per_token(&e.config);
    let roofline = bandwidth * 1e9 / weight_bytes as f64;
    let prompt = bench_prompt(t.prompt_tokens, e.config.vocab_size);
    let mut progress = Progress::new("timing", configs.len() * t.repeats);
    let mut done = 0;
    let mut timed: Vec<Timed> = vec![Timed::default(); configs.len()];
    for _ in 0..t.repeats {
        for (&(path, config), row) in configs.iter().zip(timed.iter_mut()) {
            apply(&e.backend, config)?;
            let run = time_once(e, &prompt, path, t.warmup, t.tokens)?;
            row.speeds.push(run.tok_s);
            row.outputs.push(run.tokens);
            row.launches_per_token = run.launches_per_token;
            done += 1;
            progress.set(done);
        }
    }
    // Each row's fingerprint with its own settings applied (they are part
    // of the backend's description).
    let mut rows = Vec::with_capacity(configs.len());
    for (&(path, config), t) in configs.iter().zip(timed) {
        apply(&e.backend, config)?;
        rows.push(row(path, config, t, roofline, e.fingerprint(path)));
    }
    Ok(BenchReport {
        model: model.origin.clone(),
        model_hash: e.model_hash.clone(),
        device: e.backend.device_info().device,
        copy_bandwidth_gb_s: bandwidth,
        weight_bytes_per_token: weight_bytes,
        roofline_tok_s: roofline,
        prompt_tokens: t.prompt_tokens,
        warmup_tokens: t.warmup,
        measured_tokens: t.tokens,
        repeats: t.repeats,
        load_s: Some(load_s),
        rows,
    })
}

/// `model` on GPU 0 in the default settings, and the seconds its load took.
fn load_cuda(
    model: &crate::model::Model,
) -> Result<(Engine<crate::backend::cuda::CudaBackend>, f64)> {
    let start = Instant::now();
    let e = crate::jobs::load(
        model,
        crate::jobs::accelerator::open_cuda(CudaOptions::default())?,
    )?;
    Ok((e, start.elapsed().as_secs_f64()))
}

/// Times every configuration of `grid` on GPU 0 against the roofline of
/// the measured device-to-device copy bandwidth. With `split`, every
/// configuration that records its steps is timed again with each kernel
/// family left out of the recorded step, in the same rounds (so drift falls
/// on all alike); families the step does not launch are dropped after.
pub fn cuda_bench(
    model: &crate::model::Model,
    grid: &Grid,
    t: Timing,
    split: bool,
) -> Result<BenchReport> {
    let (e, load_s) = load_cuda(model)?;
    let bandwidth = e.backend.copy_bandwidth(1 << 30, 10)?;
    let mut configs: Vec<_> = grid
        .configs()
        .into_iter()
        .map(|(p, o)| (p, RowConfig::Cuda(o)))
        .collect();
    if split {
        let recorded: Vec<_> = grid
            .configs()
            .into_iter()
            .filter(|(_, o)| o.graphs)
            .collect();
        for (p, o) in recorded {
            for f in KernelFamily::ALL {
                configs.push((p, RowConfig::CudaOmitting(o, f)));
            }
        }
    }
    let mut report = run_configs(model, &e, load_s, bandwidth, &configs, t, |b, c| match c {
        RowConfig::Cuda(o) => {
            b.omit_from_recorded_steps(None);
            b.set_options(o)
        }
        RowConfig::CudaOmitting(o, f) => {
            b.omit_from_recorded_steps(Some(f));
            b.set_options(o)
        }
        RowConfig::Mlx { .. } => Err(crate::error::Error::invalid(
            "bench",
            "an MLX configuration on the CUDA backend",
        )),
    });
    e.backend.omit_from_recorded_steps(None);
    if let Ok(r) = &mut report {
        let whole = r.clone();
        r.rows.retain(|row| {
            row.omitted.is_none()
                || whole
                    .base_of(row)
                    .is_some_and(|b| b.launches_per_token != row.launches_per_token)
        });
    }
    report
}

/// Times MLX on `device`: the graph path, then the fused path with each of
/// `fused` (the compiled op chain MLX engines call "fused", lockstep's CUDA
/// kernels; `None`: each the backend can run), each with every setting of
/// `pipelined` (step i+1 queued before token i is read, or not), against
/// the roofline of MLX's own measured streaming bandwidth. A fused variant
/// the backend cannot run is refused before anything is timed.
pub fn mlx_bench(
    model: &crate::model::Model,
    device: crate::backend::mlx::MlxDevice,
    paths: &[AttnPath],
    fused: Option<&[MlxFused]>,
    pipelined: &[bool],
    moe_routing: &[MlxMoeRouting],
    t: Timing,
) -> Result<BenchReport> {
    let be = MlxBackend::on_device(device)?;
    let fused: Vec<MlxFused> = match fused {
        Some(f) => f.to_vec(),
        None => [MlxFused::Compiled, MlxFused::Kernel]
            .into_iter()
            .filter(|&f| be.set_fused(f).is_ok())
            .collect(),
    };
    for &f in &fused {
        be.set_fused(f)?;
    }
    let start = Instant::now();
    let e = crate::jobs::load(model, be)?;
    let load_s = start.elapsed().as_secs_f64();
    let bandwidth = e.backend.copy_bandwidth(1 << 30, 10)?;
    let moes: Vec<Option<MlxMoeRouting>> = match e.config.moe {
        Some(_) => moe_routing.iter().copied().map(Some).collect(),
        None => vec![None],
    };
    let mut configs = Vec::new();
    for &p in paths {
        let variants: Vec<Option<MlxFused>> = match p {
            AttnPath::Graph => vec![None],
            AttnPath::Fused => fused.iter().copied().map(Some).collect(),
        };
        for f in variants {
            for &pipelined in pipelined {
                for &moe in &moes {
                    configs.push((
                        p,
                        RowConfig::Mlx {
                            fused: f,
                            pipelined,
                            moe,
                        },
                    ));
                }
            }
        }
    }
    let report = run_configs(model, &e, load_s, bandwidth, &configs, t, |b, c| match c {
        RowConfig::Mlx {
            fused,
            pipelined,
            moe,
        } => {
            b.set_pipelined(pipelined);
            b.set_moe_routing(moe.unwrap_or(MlxMoeRouting::Host));
            fused.map_or(Ok(()), |f| b.set_fused(f))
        }
        RowConfig::Cuda(_) | RowConfig::CudaOmitting(..) => Err(crate::error::Error::invalid(
            "bench",
            "a CUDA configuration on the MLX backend",
        )),
    })?;
    Ok(report)
}

impl BenchReport {
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "model {} ({}) on {}\ncopy bandwidth {:.0} GB/s, {:.3} GB of weights per token, roofline {:.1} tok/s\nprompt {} tokens, warm-up {}, measured {}, best of {}{}\n\n",
            self.model,
            self.model_hash,
            self.device,
            self.copy_bandwidth_gb_s,
            self.weight_bytes_per_token as f64 / 1e9,
            self.roofline_tok_s,
            self.prompt_tokens,
            self.warmup_tokens,
            self.measured_tokens,
            self.repeats,
            self.load_s
                .map_or(String::new(), |l| format!("; loaded in {l:.1} s"))

        );
        s += "path   config                           best tok/s  median tok/s  ms/token  % roofline  distinct  launches/token\n";
        for r in self.rows.iter().filter(|r| r.omitted.is_none()) {
            let on_off = |b: bool| if b { "on" } else { "off" };
            let config = match (r.mode, r.cuda_graphs, r.mlx_fused, r.mlx_pipelined) {
                (Some(m), Some(g), _, _) => format!(
                    "{m}, {}graphs {}",
                    match r.products {
                        Some(Products::TensorCores) => "tensor cores, ",
                        _ => "",
                    },
                    on_off(g)
                ),
                (_, _, f, Some(p)) => format!(
                    "{}pipeline {}{}",
                    f.map_or(String::new(), |f| format!("{}, ", f.name())),
                    on_off(p),
                    r.mlx_moe_routing
                        .map_or(String::new(), |m| format!(", moe {}", m.name()))
                ),
                (_, _, Some(f), None) => f.name().to_string(),
                _ => "-".to_string(),
            };
            s += &format!(
                "{:<6} {:<32} {:>10.1} {:>13.1} {:>9.3} {:>11.1} {:>9}  {:>14}\n",
                r.path.name(),
                config,
                r.best_tok_s,
                r.median_tok_s,
                r.best_ms_per_token,
                r.pct_of_roofline,
                r.distinct_outputs,
                r.launches_per_token
                    .map_or("-".to_string(), |l| format!("{l:.1}"))
            );
        }
        s += &self.split_text();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::synth::preset_config;

    #[test]
    fn roofline_bytes_match_the_published_shapes() {
        // qwen3-0.6b (tied): every parameter once, ~1.19 GB; qwen3-8b: all
        // but the embedding table, ~15.1 GB (the 2517 and 198 tok/s
        // at 3000 GB/s).
        let small = weight_bytes_per_token(&preset_config("qwen3-0.6b").unwrap());
        let big = weight_bytes_per_token(&preset_config("qwen3-8b").unwrap());
        assert!((3000e9 / small as f64 - 2517.0).abs() < 10.0, "{small}");
        assert!((3000e9 / big as f64 - 198.0).abs() < 2.0, "{big}");
        let moe = weight_bytes_per_token(&preset_config("qwen3-30b-a3b").unwrap());
        assert!(moe < big / 2, "active weights only: {moe}");
    }

    /// `--split`'s table: each family's cost is the whole step's best
    /// ms/token less the step's without it, rows are matched to the whole
    /// step of their own path, and what the families leave is the rest.
    #[test]
    fn split_costs_are_differences_from_the_whole_step() {
        let info = crate::backend::DeviceInfo {
            backend: crate::ident::BackendKind::Cuda,
            device: "test".into(),
            numerics: crate::ident::Numerics::Bf16,
            details: Default::default(),
        };
        let mk = |path: AttnPath, ms: f64, launches: f64, omitted: Option<KernelFamily>| {
            let mut r = row(
                path,
                match omitted {
                    Some(f) => RowConfig::CudaOmitting(CudaOptions::default(), f),
                    None => RowConfig::Cuda(CudaOptions::default()),
                },
                Timed {
                    speeds: vec![1e3 / ms],
                    outputs: vec![vec![1]],
                    launches_per_token: Some(launches),
                },
                1e4,
                Fingerprint::new(info.clone(), path, "synth:tiny", "h"),
            );
            r.best_ms_per_token = ms;
            r
        };
        let report = BenchReport {
            model: "synth:tiny".into(),
            model_hash: "h".into(),
            device: "test".into(),
            copy_bandwidth_gb_s: 1.0,
            weight_bytes_per_token: 1,
            roofline_tok_s: 1.0,
            prompt_tokens: 1,
            warmup_tokens: 1,
            measured_tokens: 1,
            repeats: 1,
            load_s: None,
            rows: vec![
                mk(AttnPath::Fused, 1.0, 200.0, None),
                mk(AttnPath::Graph, 2.0, 400.0, None),
                mk(AttnPath::Fused, 0.75, 145.0, Some(KernelFamily::Norm)),
                mk(AttnPath::Graph, 1.5, 340.0, Some(KernelFamily::Norm)),
                mk(AttnPath::Fused, 0.5, 110.0, Some(KernelFamily::Products)),
            ],
        };
        let fused = report.split_of(&report.rows[0]);
        assert_eq!(fused.len(), 2);
        assert_eq!(
            (fused[0].family, fused[0].launches_per_token),
            (KernelFamily::Norm, 55.0)
        );
        assert!((fused[0].ms_per_token - 0.25).abs() < 1e-12);
        assert!((fused[1].ms_per_token - 0.5).abs() < 1e-12);
        let graph = report.split_of(&report.rows[1]);
        assert_eq!(graph.len(), 1);
        assert!((graph[0].ms_per_token - 0.5).abs() < 1e-12);
        let text = report.to_text();
        assert!(text.contains("in-step split, fused path"), "{text}");
        assert!(text.contains("rest"), "{text}");
        assert_eq!(
            text.matches("\nfused  ").count(),
            1,
            "omitting rows stay out of the main table:\n{text}"
        );
    }

    /// Fast mode is timed once with its own products whatever deterministic
    /// mode is given, and every setting is one the backend accepts.
    #[test]
    fn fast_mode_keeps_its_own_products() {
        let s = cuda_settings(
            &ReductionMode::ALL,
            &[Products::CudaCores, Products::TensorCores],
        );
        let got: Vec<_> = s.iter().map(|o| (o.mode, o.products)).collect();
        assert_eq!(
            got,
            [
                (ReductionMode::Deterministic, Products::CudaCores),
                (ReductionMode::Deterministic, Products::TensorCores),
                (ReductionMode::Fast, Products::CudaCores),
            ]
        );
        assert!(s.iter().all(|o| o.checked().is_ok()));
        let fast_tc = CudaOptions {
            mode: ReductionMode::Fast,
            products: Products::TensorCores,
            ..CudaOptions::default()
        };
        assert!(fast_tc.checked().is_err());
    }
}
