//! The `lockstep` command line.

use clap::{Parser, Subcommand};
use lockstep::backend::cpu::{CpuBackend, Numerics};
use lockstep::backend::AttnPath;
use lockstep::engine::generate::GenerateOptions;
use lockstep::engine::Engine;
use lockstep::error::{Error, Result};
use lockstep::model::{synth::Synth, tokenizer, Model};
use lockstep::progress::Progress;
use lockstep::verify::reference::{compare_steps, first_divergence, Reference};
use lockstep::verify::tolerances::tol;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "lockstep", version, about = "Deterministic-parity verification for Qwen3 inference")]
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

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli.cmd) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn load_cpu(model: &Model, numerics: Numerics) -> Result<Engine<CpuBackend>> {
    let mut p = Progress::new("loading", model.expected_tensors().len());
    Engine::load_with_progress(model, CpuBackend::new(numerics), &mut |d, _| p.set(d))
}

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
            println!("wrote {} ({}) to {}", s.spec(), s.config.architecture_name(), out.display());
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
        } => {
            match backend {
                BackendArg::Cpu => {}
                BackendArg::Cuda => return Err(Error::BackendNotCompiled { backend: "cuda" }),
                BackendArg::Mlx => return Err(Error::BackendNotCompiled { backend: "mlx" }),
            }
            let m = Model::open(&model)?;
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
            let engine = load_cpu(&m, numerics)?;
            let opts = GenerateOptions {
                max_tokens,
                path,
                keep_logits,
                ..Default::default()
            };
            let mut p = Progress::new("generating", max_tokens);
            let run = engine.generate(&ids, &opts, &mut |i| p.set(i))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&run).expect("run serialises"));
            } else {
                println!("model    {} ({})", run.fingerprint.model_origin, run.fingerprint.model_hash);
                println!("run      {}", run.fingerprint.label());
                println!("prompt   {:?}", run.prompt);
                println!("tokens   {:?}", run.tokens);
                if let Some(text) = m.tokenizer_path().and_then(|p| tokenizer::decode(&p, &run.tokens)) {
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
        Cmd::CompareReference { reference, model, json } => compare_reference(&reference, model, json),
    }
}

fn compare_reference(path: &std::path::Path, model: Option<String>, json: bool) -> Result<()> {
    let r = Reference::load(path)?;
    let spec = model.unwrap_or_else(|| format!("synth:{}:{}", r.preset, r.seed));
    let m = Model::open(&spec)?;
    let (numerics, rel_tol, tie_tol) = match r.dtype.as_str() {
        "float32" => (
            Numerics::F64,
            tol("truth_vs_transformers_f32_logits_rel_rms"),
            tol("near_tie_margin_f32"),
        ),
        _ => (
            Numerics::Bf16,
            tol("cpu_bf16_vs_transformers_bf16_logits_rel_rms"),
            tol("near_tie_margin_bf16"),
        ),
    };
    let engine = load_cpu(&m, numerics)?;
    if engine.model_hash != r.model_hash {
        return Err(Error::invalid(
            path.display().to_string(),
            format!("reference is for model {} but {spec} is {}", r.model_hash, engine.model_hash),
        ));
    }
    let logits = engine.teacher_forced(&r.teacher_tokens(), AttnPath::Graph, &mut Default::default())?;
    let steps = compare_steps(&r, &logits[r.prompt.len() - 1..])?;
    let mut p = Progress::new("greedy", r.tokens.len());
    let opts = GenerateOptions {
        max_tokens: r.tokens.len(),
        ..Default::default()
    };
    let ours = engine.generate(&r.prompt, &opts, &mut |i| p.set(i))?;
    let div = first_divergence(&ours.tokens, &r.tokens);
    let worst = steps.iter().map(|s| s.diff.rel_rms).fold(0.0, f64::max);
    let div_margin = div.as_ref().map(|d| ours.steps[d.step].margin.min(r.steps[d.step].top[0].1 - r.steps[d.step].top[1].1));
    let tokens_ok = div_margin.is_none_or(|m| (m as f64) < tie_tol);
    let pass = worst <= rel_tol && tokens_ok && steps.iter().all(|s| s.diff.finite_ok());
    if json {
        let v = serde_json::json!({
            "reference": path, "dtype": r.dtype, "numerics": numerics.name(), "device": r.device,
            "worst_rel_rms": worst, "rel_rms_tolerance": rel_tol, "steps": steps,
            "first_divergence": div, "divergence_margin": div_margin, "near_tie_tolerance": tie_tol,
            "pass": pass,
        });
        println!("{}", serde_json::to_string_pretty(&v).expect("serialises"));
    } else {
        println!("reference {} ({} {}, {})", path.display(), r.dtype, r.attn_implementation, r.device);
        println!("ours      cpu/{} teacher-forced on the reference's tokens", numerics.name());
        println!("step  rel_rms     max_abs     ref_margin");
        for s in &steps {
            println!("{:>4}  {:.3e}   {:.3e}   {:.4}", s.step, s.diff.rel_rms, s.diff.max_abs, s.ref_margin);
        }
        println!("worst rel_rms {worst:.3e} (tolerance {rel_tol:e})");
        match (&div, div_margin) {
            (None, _) => println!("greedy tokens agree for all {} steps", r.tokens.len()),
            (Some(d), Some(m)) => println!(
                "greedy tokens first differ at step {} (ours {}, theirs {}), margin {m:.5} ({} tolerance {tie_tol})",
                d.step,
                d.ours,
                d.theirs,
                if tokens_ok { "near-tie, below" } else { "REGRESSION, above" }
            ),
            _ => unreachable!(),
        }
        println!("{}", if pass { "PASS" } else { "FAIL" });
    }
    if pass {
        Ok(())
    } else {
        Err(Error::invalid("compare-reference", "outside tolerance"))
    }
}
