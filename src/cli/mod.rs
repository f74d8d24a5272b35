//! The command line: `Cli` parses, `run` dispatches, and each command is a
//! file of its own that calls library jobs and renders their results. No
//! computation lives here.

mod args;
mod batch;
mod bench;
mod compare_reference;
mod dumps;
mod env;
mod envelope;
mod generate;
mod golden;
mod info;
mod parity;
mod score;
mod synth;
mod tp;
mod trace;
mod verify;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "lockstep",
    version,
    about = "Deterministic-parity verification for Qwen3 inference"
)]
pub struct Cli {
    /// Lay these tolerances over the committed registry for this run
    /// (`{"tolerances": [{"name", "value", "reason"}]}`); each override is
    /// printed, and carried in verify's report.
    #[arg(long, global = true)]
    pub tolerances: Option<std::path::PathBuf>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Write a synthetic Hugging Face model folder (byte-identical per seed).
    Synth(synth::Args),
    /// Greedy generation on one backend and path.
    Generate(generate::Args),
    /// Decode speed, batch 1, in one process on one loaded model, against the
    /// weight-bytes roofline of the measured bandwidth: CUDA per path x mode
    /// x graphs, MLX per path x what its fused path runs.
    Bench(bench::Args),
    /// The main job: parity and the transformers oracle on the embedded
    /// default models (tiny, tiny-moe) on every compiled backend; one table.
    Verify(verify::Args),
    /// Print the numeric fingerprint of every backend in this build.
    Env(env::Args),
    /// Fused vs graph vs f64 truth at op, layer and logits level (CPU reference).
    Parity(parity::Args),
    /// Run one input N times and measure the spread (bitwise-distinct count,
    /// pairwise RMS, ULP histogram, first-divergence steps).
    Envelope(envelope::Args),
    /// One sequence alone and in several batch compositions: the first
    /// step each composition changes, and the distinct logits per step.
    Batch(batch::Args),
    /// The envelope tensor parallelism adds, simulated on the CPU
    /// reference: each rank count and all-reduce order against one device.
    Tp(tp::Args),
    /// Golden generations: check them (near-tie aware) or regenerate them.
    Golden {
        #[command(subcommand)]
        action: golden::Action,
    },
    /// Config summary and the model hash (loads every tensor).
    Info(info::Args),
    /// Compare the CPU reference with a transformers reference file
    /// (f64 truth for float32 files, bf16 for bfloat16 files).
    CompareReference(compare_reference::Args),
    /// Teacher-forced logits of a token sequence: per step the scored
    /// token's log-probability and rank, top-k and margin; full rows at the
    /// run's own precision with --json.
    Score(score::Args),
    /// Every layer's intermediate tensors of one teacher-forced pass, as a
    /// dump (docs/dump-format.md).
    Trace(trace::Args),
    /// Two dumps op by op: where they part, and which side is nearer truth.
    Bisect(dumps::BisectArgs),
    /// Another engine's dump against lockstep's f64 truth and bf16-faithful
    /// reference on exactly its input.
    Compare(dumps::CompareArgs),
}

pub fn run(cmd: Cmd) -> lockstep::error::Result<()> {
    match cmd {
        Cmd::Synth(a) => synth::run(a),
        Cmd::Generate(a) => generate::run(a),
        Cmd::Bench(a) => bench::run(a),
        Cmd::Verify(a) => verify::run(a),
        Cmd::Env(a) => env::run(a),
        Cmd::Parity(a) => parity::run(a),
        Cmd::Envelope(a) => envelope::run(a),
        Cmd::Batch(a) => batch::run(a),
        Cmd::Tp(a) => tp::run(a),
        Cmd::Golden { action } => golden::run(action),
        Cmd::Info(a) => info::run(a),
        Cmd::CompareReference(a) => compare_reference::run(a),
        Cmd::Score(a) => score::run(a),
        Cmd::Trace(a) => trace::run(a),
        Cmd::Bisect(a) => dumps::bisect(a),
        Cmd::Compare(a) => dumps::compare(a),
    }
}
