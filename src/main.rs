//! The `lockstep` command line.

use clap::{Parser, Subcommand};
use lockstep::backend::cpu::Numerics;
use lockstep::backend::AttnPath;
use lockstep::engine::generate::GenerateOptions;
use lockstep::error::{Error, Result};
use lockstep::model::{synth::Synth, tokenizer, Model};
use lockstep::progress::Progress;
use lockstep::verify::reference::Reference;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "lockstep",
    version,
    about = "Deterministic-parity verification for Qwen3 inference"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum BackendArg {
    Cpu,
    Cuda,
    Mlx,
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum ModeArg {
    Deterministic,
    Fast,
}

impl ModeArg {
    fn mode(self) -> lockstep::backend::cuda::ReductionMode {
        match self {
            ModeArg::Deterministic => lockstep::backend::cuda::ReductionMode::Deterministic,
            ModeArg::Fast => lockstep::backend::cuda::ReductionMode::Fast,
        }
    }
}

/// CUDA run settings (ignored by the other backends).
#[derive(clap::Args, Clone, Copy)]
struct CudaArgs {
    /// CUDA reduction mode of the graph path.
    #[arg(long, value_enum, default_value = "deterministic")]
    mode: ModeArg,
    /// Record the decode step once and replay it (CUDA graphs; dense models).
    #[arg(long)]
    cuda_graphs: bool,
}

impl CudaArgs {
    fn options(self) -> lockstep::backend::cuda::CudaOptions {
        lockstep::backend::cuda::CudaOptions {
            mode: self.mode.mode(),
            graphs: self.cuda_graphs,
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Write a synthetic Hugging Face model folder (byte-identical per seed).
    Synth {
        #[arg(long)]
        preset: String,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
        /// Split weights into shards of at most this many bytes, with an index.
        #[arg(long)]
        shard_bytes: Option<usize>,
    },
    /// Greedy generation on one backend and path.
    Generate {
        /// A model folder or synth:PRESET[:SEED].
        #[arg(long, default_value = "synth:tiny")]
        model: String,
        #[arg(long, value_enum, default_value = "cpu")]
        backend: BackendArg,
        /// CPU reference arithmetic: bf16 (transformers-faithful) or f64 (truth).
        #[arg(long, value_enum, default_value = "bf16")]
        numerics: Numerics,
        #[arg(long, value_enum, default_value = "graph")]
        path: AttnPath,
        /// Comma-separated token ids.
        #[arg(long, value_delimiter = ',', conflicts_with = "prompt")]
        prompt_ids: Option<Vec<u32>>,
        /// Text, encoded with the folder's tokenizer.json.
        #[arg(long)]
        prompt: Option<String>,
        #[arg(long, default_value_t = 16)]
        max_tokens: usize,
        /// Print the recorded run as JSON.
        #[arg(long)]
        json: bool,
        /// Keep full logit vectors in the JSON.
        #[arg(long)]
        keep_logits: bool,
        #[command(flatten)]
        cuda: CudaArgs,
    },
    /// Decode speed, batch 1: every path x mode x graphs configuration timed
    /// in one process on one loaded model, against the weight-bytes roofline
    /// of the measured copy bandwidth.
    Bench {
        #[arg(long, default_value = "synth:qwen3-0.6b")]
        model: String,
        #[arg(long, value_enum, default_value = "cuda")]
        backend: BackendArg,
        #[arg(long, value_enum, value_delimiter = ',', default_value = "fused,graph")]
        paths: Vec<AttnPath>,
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "deterministic,fast"
        )]
        modes: Vec<ModeArg>,
        /// CUDA graphs settings to time: on, off or both.
        #[arg(long, value_delimiter = ',', default_value = "on")]
        graphs: Vec<String>,
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
        /// Also write the JSON report to this file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The main job: parity and the transformers oracle on the embedded
    /// default models (tiny, tiny-moe) on every compiled backend; one table.
    Verify {
        /// Repository root holding golden/.
        #[arg(long, default_value = ".")]
        root: PathBuf,
        #[arg(long)]
        json: bool,
        /// Also write the table as markdown to this file.
        #[arg(long)]
        markdown: Option<PathBuf>,
    },
    /// Print the numeric fingerprint of every backend in this build.
    Env {
        #[arg(long)]
        json: bool,
    },
    /// Fused vs graph vs f64 truth at op, layer and logits level (CPU reference).
    Parity {
        #[arg(long, default_value = "synth:tiny")]
        model: String,
        #[arg(long, value_enum, default_value = "bf16")]
        numerics: Numerics,
        /// Comma-separated prompt ids; greedy tokens are appended up to --tokens.
        #[arg(long, value_delimiter = ',', default_value = "1,17,42,99,3,250,7,8")]
        prompt_ids: Vec<u32>,
        #[arg(long, default_value_t = 32)]
        tokens: usize,
        #[arg(long)]
        json: bool,
        /// Write markdown, JSON and SVG plots into this folder.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Run one input N times and measure the spread (bitwise-distinct count,
    /// pairwise RMS, ULP histogram, first-divergence steps).
    Envelope {
        #[arg(long, default_value = "synth:tiny")]
        model: String,
        #[arg(long, value_enum, default_value = "bf16")]
        numerics: Numerics,
        #[arg(long, value_enum, default_value = "graph")]
        path: AttnPath,
        #[arg(long, default_value_t = 20)]
        runs: usize,
        #[arg(long, value_delimiter = ',', default_value = "1,17,42,99,3,250,7,8")]
        prompt_ids: Vec<u32>,
        /// Greedy steps per run (0: one teacher-forced pass over the prompt).
        #[arg(long, default_value_t = 32)]
        steps: usize,
        /// With --steps 0: `logits` (every row's logits) or `op` (q, k, v of
        /// every layer).
        #[arg(long, default_value = "logits")]
        level: String,
        #[arg(long, value_enum, default_value = "cpu")]
        backend: BackendArg,
        #[command(flatten)]
        cuda: CudaArgs,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Golden generations: check them (near-tie aware) or regenerate them.
    Golden {
        #[command(subcommand)]
        action: GoldenAction,
    },
    /// Config summary and the model hash (loads every tensor).
    Info {
        #[arg(long, default_value = "synth:tiny")]
        model: String,
        #[arg(long)]
        json: bool,
    },
    /// Compare the CPU reference with a transformers reference file
    /// (f64 truth for float32 files, bf16 for bfloat16 files).
    CompareReference {
        #[arg(long)]
        reference: PathBuf,
        /// Model folder or synth spec; defaults to synth:PRESET:SEED from the file.
        #[arg(long)]
        model: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum GoldenAction {
    /// Compare fresh runs with the committed goldens.
    Check {
        /// Repository root holding golden/.
        #[arg(long, default_value = ".")]
        root: PathBuf,
        #[arg(long)]
        json: bool,
        /// Only this backend's goldens (cpu, mlx); default: every backend compiled in.
        #[arg(long)]
        backend: Option<String>,
    },
    /// Rewrite the goldens (explicit, atomic, refused under CI).
    Regen {
        #[arg(long, default_value = ".")]
        root: PathBuf,
        /// Only this backend's goldens (cpu, mlx); default: every backend compiled in.
        #[arg(long)]
        backend: Option<String>,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli.cmd) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

use lockstep::jobs::load_cpu;

fn run(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Synth {
            preset,
            seed,
            out,
            shard_bytes,
        } => {
            let s = Synth::new(&preset, seed)?;
            lockstep::model::write_synth_folder(&s, &out, shard_bytes)?;
            println!(
                "wrote {} ({}) to {}",
                s.spec(),
                s.config.architecture_name(),
                out.display()
            );
            Ok(())
        }
        Cmd::Generate {
            model,
            backend,
            numerics,
            path,
            prompt_ids,
            prompt,
            max_tokens,
            json,
            keep_logits,
            cuda,
        } => {
            let m = Model::open(&model)?;
            for t in &m.unexpected_tensors {
                eprintln!(
                    "warning: {}: unexpected tensor `{t}` is not used by {}",
                    m.origin,
                    m.config.architecture_name()
                );
            }
            let ids = match (prompt_ids, prompt) {
                (Some(ids), _) => ids,
                (None, Some(text)) => {
                    let tp = m.tokenizer_path().ok_or_else(|| {
                        Error::Prompt(format!("{model} has no tokenizer.json; pass --prompt-ids"))
                    })?;
                    tokenizer::encode(&tp, &text)?
                }
                (None, None) => return Err(Error::Prompt("give --prompt-ids or --prompt".into())),
            };
            let opts = GenerateOptions {
                max_tokens,
                path,
                keep_logits,
                ..Default::default()
            };
            let mut p = Progress::new("generating", max_tokens);
            let run = match backend {
                BackendArg::Cpu => {
                    load_cpu(&m, numerics)?.generate(&ids, &opts, &mut |i| p.set(i))?
                }
                BackendArg::Cuda => {
                    cuda_generate(&m, &ids, &opts, cuda.options(), &mut |i| p.set(i))?
                }
                BackendArg::Mlx => mlx_generate(&m, numerics, &ids, &opts, &mut |i| p.set(i))?,
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&run).expect("run serialises")
                );
            } else {
                println!(
                    "model    {} ({})",
                    run.fingerprint.model_origin, run.fingerprint.model_hash
                );
                println!("run      {}", run.fingerprint.label());
                println!("prompt   {:?}", run.prompt);
                println!("tokens   {:?}", run.tokens);
                if let Some(text) = m
                    .tokenizer_path()
                    .and_then(|p| tokenizer::decode(&p, &run.tokens))
                {
                    println!("text     {text:?}");
                }
                let (i, min) = run
                    .steps
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (i, s.margin))
                    .fold((0, f32::INFINITY), |a, b| if b.1 < a.1 { b } else { a });
                println!("smallest top-1/top-2 margin: {min:.5} at step {i}");
            }
            Ok(())
        }
        Cmd::Info { model, json } => {
            let m = Model::open(&model)?;
            let engine = load_cpu(&m, Numerics::Bf16)?;
            let params = lockstep::model::layout::parameter_count(&m.config);
            if json {
                let v = serde_json::json!({
                    "origin": m.origin, "model_hash": engine.model_hash, "parameters": params,
                    "config": m.config, "unexpected_tensors": m.unexpected_tensors,
                });
                println!("{}", serde_json::to_string_pretty(&v).expect("serialises"));
            } else {
                println!("origin      {}", m.origin);
                println!("model hash  {}", engine.model_hash);
                println!("parameters  {params}");
                println!("config      {}", m.config.canonical_json());
                for t in &m.unexpected_tensors {
                    println!("warning: unexpected tensor `{t}` (ignored)");
                }
            }
            Ok(())
        }
        Cmd::CompareReference {
            reference,
            model,
            json,
        } => compare_reference(&reference, model, json),
        Cmd::Env { json } => {
            let mut infos: Vec<_> = [Numerics::Bf16, Numerics::F64]
                .iter()
                .map(|&n| {
                    lockstep::backend::Backend::device_info(
                        &lockstep::backend::cpu::CpuBackend::new(n),
                    )
                })
                .collect();
            let cuda = cuda_info();
            let missing = [
                ("mlx", lockstep::backend::mlx::MlxBackend::new().err()),
                (
                    "cuda",
                    cuda.as_ref()
                        .err()
                        .map(|e| Error::invalid("cuda", e.clone())),
                ),
            ];
            if let Ok(i) = cuda {
                infos.push(i);
            }
            infos.extend(mlx_info());
            if json {
                let v = serde_json::json!({
                    "lockstep_version": env!("CARGO_PKG_VERSION"),
                    "backends": infos,
                    "unavailable": missing.iter().filter_map(|(b, e)| e.as_ref().map(|e| (b, e.to_string()))).collect::<std::collections::BTreeMap<_, _>>(),
                });
                println!("{}", serde_json::to_string_pretty(&v).expect("serialises"));
            } else {
                println!("lockstep {}", env!("CARGO_PKG_VERSION"));
                for i in &infos {
                    println!("{}/{}  device: {}", i.backend, i.numerics, i.device);
                    for (k, v) in &i.details {
                        println!("    {k}: {v}");
                    }
                }
                for (b, e) in missing {
                    if let Some(e) = e {
                        println!("{b}: unavailable ({e})");
                    }
                }
            }
            Ok(())
        }
        Cmd::Parity {
            model,
            numerics,
            prompt_ids,
            tokens,
            json,
            report,
        } => {
            let m = Model::open(&model)?;
            let extra = tokens.saturating_sub(prompt_ids.len());
            let seq = lockstep::jobs::prompt_and_continuation(&m, &prompt_ids, extra)?;
            let (op, run) = lockstep::jobs::cpu_parity(&m, numerics, Default::default(), &seq)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&[&op, &run]).expect("serialises")
                );
            } else {
                print!("{}\n{}", op.to_text(), run.to_text());
            }
            if let Some(dir) = report {
                for p in lockstep::report::write_parity_report(&dir, "parity", &[&op, &run])? {
                    eprintln!("wrote {}", p.display());
                }
            }
            if op.pass && run.pass {
                Ok(())
            } else {
                Err(Error::invalid("parity", "outside tolerance"))
            }
        }
        Cmd::Bench {
            model,
            backend,
            paths,
            modes,
            graphs,
            prompt_tokens,
            warmup,
            tokens,
            repeats,
            json,
            out,
        } => {
            if backend != BackendArg::Cuda {
                return Err(Error::invalid(
                    "--backend",
                    "bench measures the CUDA backend (the others are references)",
                ));
            }
            let graphs = graphs
                .iter()
                .map(|g| match g.as_str() {
                    "on" => Ok(true),
                    "off" => Ok(false),
                    other => Err(Error::invalid(
                        "--graphs",
                        format!("{other:?} is not on or off"),
                    )),
                })
                .collect::<Result<Vec<bool>>>()?;
            let mut configs: Vec<(AttnPath, ModeArg, bool)> = Vec::new();
            for &p in &paths {
                for &m in &modes {
                    for &g in &graphs {
                        configs.push((p, m, g));
                    }
                }
            }
            let rep = cuda_bench(
                &Model::open(&model)?,
                &configs,
                prompt_tokens,
                warmup,
                tokens,
                repeats,
            )?;
            let text = serde_json::to_string_pretty(&rep).expect("report serialises");
            if let Some(path) = out {
                lockstep::util::write_json_atomically(&path, &rep)?;
            }
            if json {
                println!("{text}");
            } else {
                print!("{}", rep.to_text());
            }
            Ok(())
        }
        Cmd::Envelope {
            model,
            numerics,
            path,
            runs,
            prompt_ids,
            steps,
            level,
            backend,
            cuda,
            json,
            report,
        } => {
            use lockstep::jobs::EnvelopeLevel;
            let m = Model::open(&model)?;
            let level = match (steps, level.as_str()) {
                (0, "logits") => EnvelopeLevel::Logits,
                (0, "op") => EnvelopeLevel::Op,
                (0, other) => {
                    return Err(Error::invalid(
                        "--level",
                        format!("{other:?} is not logits or op"),
                    ))
                }
                (steps, _) => EnvelopeLevel::Greedy { steps },
            };
            let env = match backend {
                BackendArg::Cpu => {
                    let e = load_cpu(&m, numerics)?;
                    let ulp = match numerics {
                        Numerics::Bf16 => lockstep::verify::envelope::UlpType::Bf16,
                        Numerics::F64 => lockstep::verify::envelope::UlpType::F32,
                    };
                    lockstep::jobs::envelope_of(&e, &m, level, path, &prompt_ids, runs, ulp)?
                }
                BackendArg::Cuda => {
                    cuda_envelope(&m, level, path, &prompt_ids, runs, cuda.options())?
                }
                BackendArg::Mlx => mlx_envelope(&m, level, path, &prompt_ids, runs)?,
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&env).expect("serialises")
                );
            } else {
                print!("{}", env.to_text());
            }
            if let Some(dir) = report {
                for p in lockstep::report::write_envelope_report(&dir, "envelope", &[&env], steps)?
                {
                    eprintln!("wrote {}", p.display());
                }
            }
            Ok(())
        }
        Cmd::Golden { action } => match action {
            GoldenAction::Check {
                root,
                json,
                backend,
            } => {
                let results = lockstep::jobs::golden_check_on(&root, backend.as_deref())?;
                let mut failed = 0;
                for (name, r) in &results {
                    let ok = r.as_ref().is_ok_and(|o| o.passes());
                    failed += usize::from(!ok);
                    if !json {
                        match r {
                            Ok(lockstep::verify::golden::GoldenOutcome::NearTie { step, margin, threshold }) => println!(
                                "{name}: ok, with a warning: tokens differ from step {step}, a recorded near-tie (margin {margin:.4} < {threshold})"
                            ),
                            Ok(o) => println!("{name}: {} {o:?}", if ok { "ok" } else { "FAIL" }),
                            Err(e) => println!("{name}: FAIL {e}"),
                        }
                    }
                }
                if json {
                    let v: Vec<_> = results
                        .iter()
                        .map(|(n, r)| serde_json::json!({"golden": n, "result": r.as_ref().map_err(|e| e.clone())}))
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&v).expect("serialises"));
                }
                match failed {
                    0 => Ok(()),
                    n => Err(Error::invalid(
                        "golden check",
                        format!("{n} golden(s) failed"),
                    )),
                }
            }
            GoldenAction::Regen { root, backend } => {
                for line in lockstep::jobs::golden_regen(&root, backend.as_deref())? {
                    println!("{line}");
                }
                Ok(())
            }
        },
        Cmd::Verify {
            root,
            json,
            markdown,
        } => {
            let results = lockstep::jobs::verify(&root, &mut |r| {
                if !json {
                    eprintln!("{:<14} {:<60} {:?}", r.check, r.case, r.status);
                }
            })?;
            use lockstep::verify::summary;
            let backends: Vec<_> = [Numerics::Bf16, Numerics::F64]
                .iter()
                .map(|&n| {
                    lockstep::backend::Backend::device_info(
                        &lockstep::backend::cpu::CpuBackend::new(n),
                    )
                })
                .chain(mlx_info())
                .collect();
            if json {
                let v = serde_json::json!({
                    "lockstep_version": env!("CARGO_PKG_VERSION"), "backends": backends, "results": results,
                });
                println!("{}", serde_json::to_string_pretty(&v).expect("serialises"));
            } else {
                println!("lockstep {} verify", env!("CARGO_PKG_VERSION"));
                for b in &backends {
                    println!("  {}/{} on {}", b.backend, b.numerics, b.device);
                }
                print!("{}", summary::to_text(&results));
            }
            if let Some(p) = markdown {
                std::fs::write(&p, summary::to_markdown(&results)).map_err(|e| Error::io(&p, e))?;
            }
            match summary::failed(&results) {
                0 => Ok(()),
                n => Err(Error::invalid("verify", format!("{n} check(s) failed"))),
            }
        }
    }
}

/// The CUDA backend's fingerprint, or why there is none.
#[cfg(feature = "cuda")]
fn cuda_info() -> std::result::Result<lockstep::backend::DeviceInfo, String> {
    lockstep::jobs::cuda::open()
        .map(|b| lockstep::backend::Backend::device_info(&b))
        .map_err(|e| e.to_string())
}

#[cfg(not(feature = "cuda"))]
fn cuda_info() -> std::result::Result<lockstep::backend::DeviceInfo, String> {
    Err(Error::BackendNotCompiled { backend: "cuda" }.to_string())
}

/// Greedy generation on the CUDA backend (GPU 0).
#[cfg(feature = "cuda")]
fn cuda_generate(
    m: &Model,
    ids: &[u32],
    opts: &GenerateOptions,
    options: lockstep::backend::cuda::CudaOptions,
    on_step: &mut dyn FnMut(usize),
) -> Result<lockstep::engine::record::RecordedRun> {
    cuda_load(m, options)?.generate(ids, opts, on_step)
}

#[cfg(feature = "cuda")]
fn cuda_load(
    m: &Model,
    options: lockstep::backend::cuda::CudaOptions,
) -> Result<lockstep::engine::Engine<lockstep::backend::cuda::CudaBackend>> {
    let be = lockstep::backend::cuda::CudaBackend::with_options(0, options)?;
    let mut p = Progress::new("loading", m.expected_tensors().len());
    lockstep::engine::Engine::load_with_progress(m, be, &mut |d, _| p.set(d))
}

#[cfg(feature = "cuda")]
fn cuda_envelope(
    m: &Model,
    level: lockstep::jobs::EnvelopeLevel,
    path: AttnPath,
    tokens: &[u32],
    runs: usize,
    options: lockstep::backend::cuda::CudaOptions,
) -> Result<lockstep::verify::envelope::Envelope> {
    let e = cuda_load(m, options)?;
    let ulp = lockstep::verify::envelope::UlpType::Bf16;
    lockstep::jobs::envelope_of(&e, m, level, path, tokens, runs, ulp)
}

#[cfg(feature = "cuda")]
fn cuda_bench(
    m: &Model,
    configs: &[(AttnPath, ModeArg, bool)],
    prompt_tokens: usize,
    warmup: usize,
    tokens: usize,
    repeats: usize,
) -> Result<lockstep::bench::BenchReport> {
    use lockstep::backend::Backend;
    use lockstep::bench;
    let e = cuda_load(m, Default::default())?;
    let bandwidth = e.backend.copy_bandwidth(1 << 30, 10)?;
    let weight_bytes = bench::weight_bytes_per_token(&e.config);
    let roofline = bandwidth * 1e9 / weight_bytes as f64;
    let prompt = bench::bench_prompt(prompt_tokens, e.config.vocab_size);
    let mut progress = Progress::new("timing", configs.len() * repeats);
    let mut done = 0;
    let mut rows = Vec::new();
    for &(path, mode, graphs) in configs {
        e.backend
            .set_options(lockstep::backend::cuda::CudaOptions {
                mode: mode.mode(),
                graphs,
            })?;
        let (speeds, outputs) = bench::time_config(
            &e,
            &prompt,
            path,
            warmup,
            tokens,
            repeats,
            &mut progress,
            &mut done,
        )?;
        rows.push(bench::row(
            path,
            mode.mode().name(),
            graphs,
            speeds,
            outputs,
            roofline,
            e.fingerprint(path),
        ));
    }
    Ok(bench::BenchReport {
        model: m.origin.clone(),
        model_hash: e.model_hash.clone(),
        device: e.backend.device_info().device,
        copy_bandwidth_gb_s: bandwidth,
        weight_bytes_per_token: weight_bytes,
        roofline_tok_s: roofline,
        prompt_tokens,
        warmup_tokens: warmup,
        measured_tokens: tokens,
        repeats,
        rows,
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda_generate(
    _m: &Model,
    _ids: &[u32],
    _opts: &GenerateOptions,
    _options: lockstep::backend::cuda::CudaOptions,
    _on_step: &mut dyn FnMut(usize),
) -> Result<lockstep::engine::record::RecordedRun> {
    Err(Error::BackendNotCompiled { backend: "cuda" })
}

#[cfg(not(feature = "cuda"))]
fn cuda_envelope(
    _m: &Model,
    _level: lockstep::jobs::EnvelopeLevel,
    _path: AttnPath,
    _tokens: &[u32],
    _runs: usize,
    _options: lockstep::backend::cuda::CudaOptions,
) -> Result<lockstep::verify::envelope::Envelope> {
    Err(Error::BackendNotCompiled { backend: "cuda" })
}

#[cfg(not(feature = "cuda"))]
fn cuda_bench(
    _m: &Model,
    _configs: &[(AttnPath, ModeArg, bool)],
    _prompt_tokens: usize,
    _warmup: usize,
    _tokens: usize,
    _repeats: usize,
) -> Result<lockstep::bench::BenchReport> {
    Err(Error::BackendNotCompiled { backend: "cuda" })
}

#[cfg(feature = "mlx")]
fn mlx_envelope(
    m: &Model,
    level: lockstep::jobs::EnvelopeLevel,
    path: AttnPath,
    tokens: &[u32],
    runs: usize,
) -> Result<lockstep::verify::envelope::Envelope> {
    let e = lockstep::jobs::mlx::load(m)?;
    let ulp = lockstep::verify::envelope::UlpType::Bf16;
    lockstep::jobs::envelope_of(&e, m, level, path, tokens, runs, ulp)
}

#[cfg(not(feature = "mlx"))]
fn mlx_envelope(
    _m: &Model,
    _level: lockstep::jobs::EnvelopeLevel,
    _path: AttnPath,
    _tokens: &[u32],
    _runs: usize,
) -> Result<lockstep::verify::envelope::Envelope> {
    Err(Error::BackendNotCompiled { backend: "mlx" })
}

/// The MLX backend's fingerprint, when this build has MLX.
#[cfg(feature = "mlx")]
fn mlx_info() -> Option<lockstep::backend::DeviceInfo> {
    let b = lockstep::backend::mlx::MlxBackend::new().ok()?;
    Some(lockstep::backend::Backend::device_info(&b))
}

#[cfg(not(feature = "mlx"))]
fn mlx_info() -> Option<lockstep::backend::DeviceInfo> {
    None
}

/// Greedy generation on MLX, which computes in bf16 only: `--numerics f64`
/// is refused rather than silently ignored.
#[cfg(feature = "mlx")]
fn mlx_generate(
    m: &Model,
    numerics: Numerics,
    ids: &[u32],
    opts: &GenerateOptions,
    on_step: &mut dyn FnMut(usize),
) -> Result<lockstep::engine::record::RecordedRun> {
    if numerics != Numerics::Bf16 {
        return Err(Error::invalid(
            "--numerics",
            "the MLX backend computes in bf16 only; f64 truth is the CPU reference's",
        ));
    }
    lockstep::jobs::mlx::load(m)?.generate(ids, opts, on_step)
}

#[cfg(not(feature = "mlx"))]
fn mlx_generate(
    _m: &Model,
    _numerics: Numerics,
    _ids: &[u32],
    _opts: &GenerateOptions,
    _on_step: &mut dyn FnMut(usize),
) -> Result<lockstep::engine::record::RecordedRun> {
    Err(Error::BackendNotCompiled { backend: "mlx" })
}

fn compare_reference(path: &std::path::Path, model: Option<String>, json: bool) -> Result<()> {
    let r = Reference::load(path)?;
    let spec = model.unwrap_or_else(|| format!("synth:{}:{}", r.preset, r.seed));
    let report = lockstep::jobs::compare_with_reference(&r, &Model::open(&spec)?)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("report serialises")
        );
    } else {
        print!("{}", report.to_text());
    }
    if report.pass {
        Ok(())
    } else {
        Err(Error::invalid(
            path.display().to_string(),
            "outside tolerance",
        ))
    }
}
