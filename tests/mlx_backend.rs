//! What only the MLX backend has (`--features mlx`, MLX on its CPU device);
//! the checks every accelerator shares are in accelerators.rs:
//! - its MoE op reproduces the CPU reference bit for bit on equal inputs;
//! - it reports its device, numerics and the MLX version it loaded;
//! - a planted fault in its fused path fails the op-level contract;
//! - on MLX's GPU of a CUDA build, the fused path is lockstep's CUDA kernels:
//!   distinct from the graph path, within the contract, nearer truth, batch
//!   invariant, and a planted fault in it fails the contract;
//! - its MoE layers routed on the device (stacked experts, gathered
//!   products) give the reference's output, bitwise on its CPU device;
//! - a model larger than memory is refused up front.
//!
//! Built without the feature, every test prints a SKIPPED line straight to
//! stderr (through `lockstep::skip`) and passes, unless
//! LOCKSTEP_REQUIRE_MLX=1, which turns the skip into a failure.

// Without the feature `MlxBackend` is an uninhabited stub: the bodies still
// type-check, and the compiler knows they cannot run past `open`.
#![cfg_attr(
    not(feature = "mlx"),
    allow(unreachable_code, unused_variables, unused_mut)
)]

mod common;

use common::{open, sequence, PROMPT};
use lockstep::backend::cpu::{CpuBackend, Numerics};
use lockstep::backend::mlx::{MlxBackend, MlxDevice, MlxFaults, MlxFused};
use lockstep::backend::{AttnPath, Backend, BackendKind, ExpertWeights, MoeWeights};
use lockstep::engine::generate::GenerateOptions;
use lockstep::jobs::accelerator::{Mlx, MlxGpu};
use lockstep::jobs::parity::op_parity_on;
use lockstep::jobs::Accelerator;
use lockstep::jobs::{load, Fixture};
use lockstep::model::Model;
use lockstep::verify::metrics::diff;
use lockstep::verify::tolerances::{tol, Tol};

fn t(test: &str) -> String {
    format!("tests/mlx_backend.rs::{test}")
}

/// Uploads layer `l`'s MoE weights of `model` to `be`.
fn moe_weights<B: Backend>(be: &B, model: &Model, l: usize) -> MoeWeights<B::Weight> {
    let up = |n: String| be.upload(&n, &model.tensor(&n).unwrap()).unwrap();
    let p = format!("model.layers.{l}.mlp");
    let m = model.config.moe.as_ref().expect("an MoE model");
    MoeWeights {
        router: up(format!("{p}.gate.weight")),
        experts: (0..m.num_experts)
            .map(|e| ExpertWeights {
                gate: up(format!("{p}.experts.{e}.gate_proj.weight")),
                up: up(format!("{p}.experts.{e}.up_proj.weight")),
                down: up(format!("{p}.experts.{e}.down_proj.weight")),
            })
            .collect(),
        top_k: m.num_experts_per_tok,
        norm_topk_prob: m.norm_topk_prob,
    }
}

/// The MoE op (router, top-k with ties to the lower index, renormalised
/// weights, experts summed in ascending order) on identical bf16 inputs:
/// MLX must reproduce the reference bit for bit. Products of bf16 values
/// are exact in f32 and the router's 64-term sums land on the same bf16
/// logits, so every routing decision and every rounding point is shared;
/// any difference is a difference in what the op computes.
#[test]
fn mlx_moe_matches_cpu_bf16_bitwise_on_the_same_input() {
    if let Some((_lock, mlx)) = open::<Mlx>(&t("mlx_moe_matches_cpu_bf16_bitwise")) {
        moe_matches_cpu_bitwise(&mlx);
    }
}

/// Generic over the backend so that the stub build (no MLX) type-checks
/// the same body.
fn moe_matches_cpu_bitwise<B: Backend>(other: &B) {
    let spec = "synth:tiny-moe";
    let model = Model::open(spec).unwrap();
    let seq = sequence(spec);
    let cpu = CpuBackend::new(Numerics::Bf16);
    // Inputs: the reference's normalised hidden states of each layer.
    let rec = common::cpu_engine(spec, Numerics::Bf16)
        .record_attention_inputs(&seq, &[AttnPath::Graph])
        .unwrap();
    let hidden = model.config.hidden_size;
    for l in &rec {
        let (wc, wm) = (
            moe_weights(&cpu, &model, l.layer),
            moe_weights(other, &model, l.layer),
        );
        let xc = cpu
            .activation_from_host(&l.input, seq.len(), hidden)
            .unwrap();
        let xm = other
            .activation_from_host(&l.input, seq.len(), hidden)
            .unwrap();
        let oc = cpu.to_host(&cpu.moe(&xc, &wc).unwrap()).unwrap().0;
        let om = other.to_host(&other.moe(&xm, &wm).unwrap()).unwrap().0;
        let d = diff(&om, &oc);
        println!(
            "{spec} layer {} moe on {} rows: max abs difference {:e}",
            l.layer,
            seq.len(),
            d.max_abs
        );
        assert!(
            d.finite_ok(),
            "layer {}: non-finite at {:?}",
            l.layer,
            d.first_non_finite
        );
        assert_eq!(
            d.max_abs,
            0.0,
            "layer {}: {}'s MoE differs from the reference on the same input (max abs {:e} at {})",
            l.layer,
            other.kind(),
            d.max_abs,
            d.max_abs_index
        );
    }
}

/// A whole engine (the loader stacks the experts): teacher-forced logits
/// with the routing on the device against the host's.
fn engine_routed_on_the_device_matches_host_routing(mlx: &MlxBackend) {
    use lockstep::backend::mlx::MlxMoeRouting;
    let spec = "synth:tiny-moe";
    let model = Model::open(spec).unwrap();
    let seq = sequence(spec);
    let be = if mlx.device() == lockstep::backend::mlx::MlxDevice::Cpu {
        MlxBackend::new().unwrap()
    } else {
        MlxBackend::gpu().unwrap()
    };
    let e = load(&model, be).unwrap();
    let host = e
        .teacher_forced(&seq, AttnPath::Graph, &mut Default::default())
        .unwrap();
    e.backend.set_moe_routing(MlxMoeRouting::Device);
    let device = e
        .teacher_forced(&seq, AttnPath::Graph, &mut Default::default())
        .unwrap();
    let worst = host
        .iter()
        .zip(&device)
        .map(|(h, d)| diff(d, h).rel_rms)
        .fold(0.0, f64::max);
    println!(
        "{spec} {}: logits routed on the device vs the host, worst row rel RMS {worst:.3e}",
        e.backend.kind()
    );
    if mlx.device() == lockstep::backend::mlx::MlxDevice::Cpu {
        assert_eq!(worst, 0.0);
    } else {
        assert!(worst < tol(Tol::MlxGpuBf16VsCpuBf16LogitsRelRms), "{worst}");
    }
}

/// Layer `l`'s MoE weights with the experts uploaded together
/// (`Backend::upload_experts`: on MLX, stacked, each expert a view).
fn moe_weights_stacked<B: Backend>(be: &B, model: &Model, l: usize) -> MoeWeights<B::Weight> {
    let p = format!("model.layers.{l}.mlp");
    let m = model.config.moe.as_ref().expect("an MoE model");
    let names: Vec<[String; 3]> = (0..m.num_experts)
        .map(|e| {
            ["gate_proj", "up_proj", "down_proj"].map(|n| format!("{p}.experts.{e}.{n}.weight"))
        })
        .collect();
    let tensors: Vec<_> = names
        .iter()
        .map(|ns| ns.clone().map(|n| model.tensor(&n).unwrap()))
        .collect();
    MoeWeights {
        router: be
            .upload(
                &format!("{p}.gate.weight"),
                &model.tensor(&format!("{p}.gate.weight")).unwrap(),
            )
            .unwrap(),
        experts: be.upload_experts(&names, &tensors).unwrap(),
        top_k: m.num_experts_per_tok,
        norm_topk_prob: m.norm_topk_prob,
    }
}

/// MoE routed on MLX's device (`MlxMoeRouting::Device`: softmax, top-k and
/// the gathered expert products without a host round trip) against the CPU
/// reference on the same inputs, a whole prefill and single rows; the host
/// routing over the same stacked weights stays bitwise the reference's. A
/// top-k one short (the control) must be caught by the same comparison.
#[test]
fn mlx_moe_routed_on_the_device_matches_the_reference() {
    if let Some((_lock, mlx)) =
        open::<Mlx>(&t("mlx_moe_routed_on_the_device_matches_the_reference"))
    {
        moe_on_device_matches(&mlx);
    }
}

#[test]
fn mlx_gpu_moe_routed_on_the_device_matches_the_reference() {
    if let Some((_lock, mlx)) =
        open::<MlxGpu>(&t("mlx_gpu_moe_routed_on_the_device_matches_the_reference"))
    {
        moe_on_device_matches(&mlx);
    }
}

fn moe_on_device_matches(mlx: &MlxBackend) {
    engine_routed_on_the_device_matches_host_routing(mlx);
    use lockstep::backend::mlx::MlxMoeRouting;
    let spec = "synth:tiny-moe";
    let model = Model::open(spec).unwrap();
    let seq = sequence(spec);
    let cpu = CpuBackend::new(Numerics::Bf16);
    let rec = common::cpu_engine(spec, Numerics::Bf16)
        .record_attention_inputs(&seq, &[AttnPath::Graph])
        .unwrap();
    let hidden = model.config.hidden_size;
    for l in &rec {
        let wc = moe_weights(&cpu, &model, l.layer);
        let mut wm = moe_weights_stacked(mlx, &model, l.layer);
        for rows in [seq.len(), 1] {
            let input = &l.input[(seq.len() - rows) * hidden..];
            let xc = cpu.activation_from_host(input, rows, hidden).unwrap();
            let xm = mlx.activation_from_host(input, rows, hidden).unwrap();
            let oc = cpu.to_host(&cpu.moe(&xc, &wc).unwrap()).unwrap().0;
            let run = |routing, w: &MoeWeights<_>| {
                mlx.set_moe_routing(routing);
                let out = mlx.to_host(&mlx.moe(&xm, w).unwrap()).unwrap().0;
                mlx.set_moe_routing(MlxMoeRouting::Host);
                out
            };
            let host = run(MlxMoeRouting::Host, &wm);
            assert_eq!(
                diff(&host, &oc).max_abs,
                0.0,
                "layer {} host routing over stacked weights",
                l.layer
            );
            let device = run(MlxMoeRouting::Device, &wm);
            let d = diff(&device, &oc);
            println!(
                "{spec} layer {} on {rows} rows, routed on the device: rel RMS {:.3e}, max abs {:.3e}",
                l.layer, d.rel_rms, d.max_abs
            );
            // On the CPU device the same sums in the same order: bitwise,
            // renormalised or not.
            if mlx.device() == lockstep::backend::mlx::MlxDevice::Cpu {
                assert_eq!(d.max_abs, 0.0, "layer {}: {d:?}", l.layer);
                let (mut wc2, mut wm2) = (
                    moe_weights(&cpu, &model, l.layer),
                    moe_weights_stacked(mlx, &model, l.layer),
                );
                wc2.norm_topk_prob = false;
                wm2.norm_topk_prob = false;
                let oc2 = cpu.to_host(&cpu.moe(&xc, &wc2).unwrap()).unwrap().0;
                let d2 = diff(&run(MlxMoeRouting::Device, &wm2), &oc2);
                assert_eq!(
                    d2.max_abs, 0.0,
                    "layer {} without renormalisation: {d2:?}",
                    l.layer
                );
            }
            assert!(
                d.finite_ok() && d.rel_rms < tol(Tol::MlxBf16VsCpuBf16LogitsRelRms) / 10.0,
                "layer {}: {d:?}",
                l.layer
            );
            wm.top_k -= 1;
            let short = run(MlxMoeRouting::Device, &wm);
            wm.top_k += 1;
            assert!(
                diff(&short, &oc).rel_rms > d.rel_rms * 10.0 + 1e-3,
                "layer {}: top-k - 1 not caught",
                l.layer
            );
        }
    }
}

#[test]
fn mlx_backend_reports_mlx_device_bf16_numerics_and_version() {
    let Some((_lock, be)) = open::<Mlx>(&t("mlx_backend_reports_device")) else {
        return;
    };
    reports_device(&be, be.mlx_version());
}

fn reports_device<B: Backend>(be: &B, version: &str) {
    let info = be.device_info();
    println!("{info:?}");
    assert_eq!(info.backend, BackendKind::Mlx);
    assert_eq!(info.numerics, Numerics::Bf16);
    assert!(info.device.starts_with("MLX cpu"), "{}", info.device);
    let v = info.details.get("mlx").expect("MLX version in details");
    assert!(
        v.split('.').count() >= 3 && v != "unknown",
        "MLX version {v:?}"
    );
    assert_eq!(v, version);
}

/// Negative control: a fused path that rotates one position too far must
/// fail the fused-vs-graph contract at op level (the check verify runs).
#[test]
fn mlx_fused_qkv_with_a_planted_rope_offset_fails_the_check() {
    let Some((_lock, _be)) = open::<Mlx>(&t("mlx_fused_qkv_with_a_planted_rope_offset")) else {
        return;
    };
    let fx = Fixture::preset("tiny").unwrap();
    let faults = MlxFaults {
        fused_rope_position_offset: 1,
        ..Default::default()
    };
    let e = load(&fx.model, MlxBackend::with_faults(faults).unwrap()).unwrap();
    let op = op_parity_on(&e, &fx.truth, &fx.seq, Tol::FusedVsGraphRms).unwrap();
    println!("{}", op.to_text());
    let limit = tol(Tol::FusedVsGraphRms);
    assert!(
        !op.pass && op.worst_fused_vs_graph_rms() >= limit,
        "a planted RoPE offset stayed within fused_vs_graph_rms ({:.3e} < {limit:e})",
        op.worst_fused_vs_graph_rms()
    );
}

/// Negative control of the shared suite's decode check: a pipelined decode
/// that feeds each step the wrong token gives other tokens than the
/// recorded run, and turning pipelining off (the stepwise loop, which never
/// embeds a deferred token) brings the recorded run's tokens back.
#[test]
fn mlx_pipelined_decode_fed_the_wrong_token_parts_from_the_recorded_run() {
    mlx_pipelined_decode_fault_on::<Mlx>(&t("mlx_pipelined_decode_fed_the_wrong_token"));
}

#[test]
fn mlx_gpu_pipelined_decode_fed_the_wrong_token_parts_from_the_recorded_run() {
    mlx_pipelined_decode_fault_on::<MlxGpu>(&t("mlx_gpu_pipelined_decode_fed_the_wrong_token"));
}

fn mlx_pipelined_decode_fault_on<A: Accelerator<Backend = MlxBackend>>(test: &str) {
    let Some((_lock, be)) = open::<A>(test) else {
        return;
    };
    let device = be.device();
    let faults = MlxFaults {
        pipelined_token_shift: 1,
        ..Default::default()
    };
    let m = Model::open("synth:tiny").unwrap();
    let e = load(&m, MlxBackend::with_faults_on(device, faults).unwrap()).unwrap();
    let opts = GenerateOptions {
        max_tokens: 16,
        ..Default::default()
    };
    let recorded = e.generate(&PROMPT, &opts, &mut |_| {}).unwrap().tokens;
    let faulty = e
        .decode_greedy(&PROMPT, 16, AttnPath::Graph, &mut |_| {})
        .unwrap();
    assert_ne!(
        faulty, recorded,
        "a decode fed token+1 gave the recorded tokens"
    );
    assert_eq!(
        faulty[0], recorded[0],
        "the prefill's token comes before any deferred one"
    );
    e.backend.set_pipelined(false);
    let stepwise = e
        .decode_greedy(&PROMPT, 16, AttnPath::Graph, &mut |_| {})
        .unwrap();
    assert_eq!(stepwise, recorded, "the stepwise loop embeds host tokens");
}

/// Whether `be`'s fused path is lockstep's CUDA kernels (MLX's CUDA build);
/// on another GPU build (Metal) the kernel tests skip, saying why.
fn runs_the_kernel(test: &str, be: &MlxBackend) -> bool {
    let yes = be.fused() == MlxFused::Kernel;
    if !yes {
        lockstep::skip::skip(
            lockstep::skip::Need::MlxGpu,
            test,
            "lockstep's fused kernels need MLX's CUDA build; this libmlx's GPU is another",
        );
    }
    yes
}

/// On MLX's GPU of a CUDA build the fused path is lockstep's CUDA kernels: a path of its own (not bitwise the graph path, as the compiled
/// chain is), within the op contract, and nearer f64 truth than the graph
/// path on q and k, which it rounds once where the graph path rounds after
/// every op. The compiled chain (`MlxFused::Compiled`) stays bitwise the
/// graph path.
/// A model far larger than memory (the 30B-A3B shape at 8x its depth,
/// about 0.5 TB) is refused before any tensor is made, naming both sizes,
/// on MLX's CPU device (the host) and its GPU (the host, which writes MLX's
/// managed memory first, and MLX's allocator limit).
#[test]
fn mlx_a_model_larger_than_memory_is_refused_up_front() {
    refused_up_front::<Mlx>(&t("mlx_a_model_larger_than_memory_is_refused_up_front"));
}

#[test]
fn mlx_gpu_a_model_larger_than_memory_is_refused_up_front() {
    refused_up_front::<MlxGpu>(&t("mlx_gpu_a_model_larger_than_memory_is_refused_up_front"));
}

fn refused_up_front<A: Accelerator<Backend = MlxBackend>>(test: &str) {
    use lockstep::engine::{resident_bytes, Engine};
    let Some((_lock, be)) = open::<A>(test) else {
        return;
    };
    let mut s = lockstep::model::synth::Synth::new("qwen3-30b-a3b", 0).unwrap();
    s.config.num_hidden_layers *= 8;
    let m = Model::synthetic(s);
    let free = be.free_memory().expect("MLX's device reports its memory");
    assert!(free < resident_bytes(&m.config), "{free} bytes free");
    let t = std::time::Instant::now();
    let e = Engine::load(&m, be).err().expect("refused").to_string();
    assert!(e.contains("needs about") && e.contains("GiB free"), "{e}");
    assert!(
        t.elapsed().as_secs() < 5,
        "refused only after {:?}",
        t.elapsed()
    );
}

#[test]
fn mlx_gpu_fused_kernel_is_a_distinct_path_within_the_contract() {
    let test = t("mlx_gpu_fused_kernel_is_a_distinct_path");
    let Some((_lock, be)) = open::<MlxGpu>(&test) else {
        return;
    };
    if !runs_the_kernel(&test, &be) {
        return;
    }
    let fx = Fixture::preset("tiny").unwrap();
    let e = load(&fx.model, be).unwrap();
    let op = op_parity_on(&e, &fx.truth, &fx.seq, Tol::FusedVsGraphRms).unwrap();
    println!("{}", op.to_text());
    assert!(op.pass, "{}", op.to_text());
    assert!(
        op.worst_fused_vs_graph_rms() > 0.0,
        "the kernel's output equals the graph path bit for bit: is it running?"
    );
    common::assert_fused_nearer_truth_on_q_and_k(&op);
    let chain = load(
        &fx.model,
        MlxGpu::open()
            .unwrap()
            .with_fused(MlxFused::Compiled)
            .unwrap(),
    )
    .unwrap();
    let op = op_parity_on(&chain, &fx.truth, &fx.seq, Tol::FusedVsGraphRms).unwrap();
    assert_eq!(op.worst_fused_vs_graph_rms(), 0.0, "{}", op.to_text());
}

/// Negative control for the kernel: rotating one position too far must
/// fail the op contract.
#[test]
fn mlx_gpu_fused_kernel_with_a_planted_rope_offset_fails_the_check() {
    let test = t("mlx_gpu_fused_kernel_with_a_planted_rope_offset");
    let Some((_lock, be)) = open::<MlxGpu>(&test) else {
        return;
    };
    if !runs_the_kernel(&test, &be) {
        return;
    }
    let fx = Fixture::preset("tiny").unwrap();
    let faults = MlxFaults {
        fused_rope_position_offset: 1,
        ..Default::default()
    };
    let be = MlxBackend::with_faults_on(MlxDevice::Gpu, faults).unwrap();
    assert_eq!(be.fused(), MlxFused::Kernel);
    let e = load(&fx.model, be).unwrap();
    let op = op_parity_on(&e, &fx.truth, &fx.seq, Tol::FusedVsGraphRms).unwrap();
    println!("{}", op.to_text());
    assert!(!op.pass, "{}", op.to_text());
}

/// A row's kernel output is bit-identical whether the row is alone or
/// among up to 64 rows (the kernel's blocks never mix rows).
#[test]
fn mlx_gpu_fused_kernel_is_batch_invariant() {
    let test = t("mlx_gpu_fused_kernel_is_batch_invariant");
    let Some((_lock, be)) = open::<MlxGpu>(&test) else {
        return;
    };
    if !runs_the_kernel(&test, &be) {
        return;
    }
    let m = Model::open("synth:tiny").unwrap();
    common::assert_fused_batch_invariant(&load(&m, be).unwrap());
}

/// The large shapes on MLX's GPU (run by `ci/device-mlx.sh big`, ignored
/// otherwise: minutes of loading): at op level, each fused variant (the
/// compiled chain, lockstep's kernels) against the graph path within the
/// contract at every layer; for dense models, MLX-GPU logits against the
/// CPU reference (bf16) on 8 tokens. LOCKSTEP_BIG_MODELS picks the presets
/// (default qwen3-8b).
#[test]
#[ignore = "large models: run with --ignored on a GPU machine (ci/device-mlx.sh big)"]
fn mlx_gpu_large_models_fused_vs_graph_and_cpu() {
    let specs = std::env::var("LOCKSTEP_BIG_MODELS").unwrap_or("synth:qwen3-8b".into());
    for spec in specs.split(',') {
        let test = t("mlx_gpu_large_models_fused_vs_graph_and_cpu");
        let Some((_lock, be)) = open::<MlxGpu>(&test) else {
            return;
        };
        let m = Model::open(spec).unwrap();
        let e = load(&m, be).unwrap();
        for (i, fused) in [MlxFused::Compiled, MlxFused::Kernel]
            .into_iter()
            .enumerate()
        {
            e.backend.set_fused(fused).unwrap();
            let label = format!("mlx-gpu fused ({})", fused.name());
            common::assert_large_model_parity(
                spec,
                &label,
                &m,
                &e,
                Tol::MlxGpuBf16VsCpuBf16LogitsRelRms,
                i == 1,
            );
        }
    }
}
