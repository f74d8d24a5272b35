//! The MLX backend (`--features mlx`, MLX on its CPU device) against the CPU
//! reference and against itself:
//! (a) teacher-forced logits of MLX's graph path vs the CPU reference in bf16;
//! (b) MLX's fused path vs its graph path at op level (q, k, v per layer),
//!     with a planted fault proving the check can fail;
//! (c) the determinism envelope: N identical teacher-forced runs, counted by
//!     bitwise-distinct logits;
//! (d) greedy generation vs the CPU reference, diverging only at a near-tie.
//!
//! Built without the feature, every test prints a SKIPPED line straight to
//! stderr (past the harness's capture, through `lockstep::skip`) and passes,
//! unless LOCKSTEP_REQUIRE_MLX=1, which turns the skip into a failure.

mod common;

/// Declares a test that needs MLX: the real body with the feature, a loud
/// skip (or, with LOCKSTEP_REQUIRE_MLX=1, a failure) without it.
macro_rules! mlx_test {
    ($(#[$meta:meta])* fn $name:ident() $body:block) => {
        $(#[$meta])*
        #[cfg(feature = "mlx")]
        #[test]
        fn $name() $body

        $(#[$meta])*
        #[cfg(not(feature = "mlx"))]
        #[test]
        fn $name() {
            skipped(stringify!($name));
        }
    };
}

#[cfg(not(feature = "mlx"))]
fn skipped(test: &str) {
    lockstep::skip::skip(
        lockstep::skip::Need::Mlx,
        &format!("tests/mlx_backend.rs::{test}"),
        "lockstep was built without the `mlx` feature; run `cargo test --features mlx`",
    );
}

#[cfg(feature = "mlx")]
mod mlx {
    pub use super::common::{cpu_engine, sequence, PROMPT};
    pub use lockstep::backend::cpu::Numerics;
    pub use lockstep::backend::mlx::{MlxBackend, MlxFaults};
    pub use lockstep::backend::{AttnPath, Backend};
    pub use lockstep::engine::generate::GenerateOptions;
    pub use lockstep::engine::{Capture, Engine};
    pub use lockstep::model::Model;
    pub use lockstep::verify::metrics::diff;
    pub use lockstep::verify::reference::first_divergence;
    pub use lockstep::verify::rows;
    pub use lockstep::verify::tolerances::tol;
    use std::collections::BTreeSet;

    pub fn mlx_engine(spec: &str, faults: MlxFaults) -> Engine<MlxBackend> {
        let backend = MlxBackend::with_faults(faults).expect("MLX backend");
        Engine::load(&Model::open(spec).unwrap(), backend).unwrap()
    }

    /// Per-layer outputs and every row's logits (last entry), teacher-forced.
    pub fn layers_and_logits<B: Backend>(
        e: &Engine<B>,
        seq: &[u32],
        path: AttnPath,
    ) -> Vec<Vec<f64>> {
        let mut c = Capture {
            layers: Some(Vec::new()),
            qkv: None,
        };
        let logits = e.teacher_forced(seq, path, &mut c).unwrap();
        let mut all = c.layers.unwrap();
        all.push(logits.concat());
        all
    }

    /// How a teacher-forced MLX run compares with the CPU reference, row by
    /// row (row `r` = the logits after token `r`).
    pub enum RowVerdict {
        /// Every row within the tolerance.
        AllWithin,
        /// Rows before `row` within the tolerance; `row` beyond it, explained
        /// by a routing near-tie of MLX's own record in that row.
        RoutingNearTie { row: usize, gap: f32, layer: usize },
    }

    /// The row rule of (a) and (d): `lockstep::verify::rows` (dense models:
    /// every row within `mlx_bf16_vs_cpu_bf16_logits_rel_rms`; MoE models: up
    /// to the first row beyond it, which must carry a routing near-tie in
    /// MLX's record), here with a per-row table. The MoE op itself is checked
    /// bitwise on equal inputs by
    /// `mlx_moe_matches_cpu_bf16_bitwise_on_the_same_input`. Err carries the
    /// failure message.
    pub fn judge_rows(
        spec: &str,
        cpu: &Engine<lockstep::backend::cpu::CpuBackend>,
        mlx: &Engine<MlxBackend>,
        seq: &[u32],
    ) -> Result<RowVerdict, String> {
        let c = cpu
            .teacher_forced(seq, AttnPath::Graph, &mut Capture::default())
            .unwrap();
        mlx.backend.record_routing(true);
        let m = mlx
            .teacher_forced(seq, AttnPath::Graph, &mut Capture::default())
            .unwrap();
        let routing = mlx.backend.take_routing_log();
        mlx.backend.record_routing(false);
        let (name, tie_name) = (
            "mlx_bf16_vs_cpu_bf16_logits_rel_rms",
            "moe_routing_near_tie_bf16",
        );
        let (limit, tie) = (tol(name), tol(tie_name));
        let rows: Vec<f64> = m.iter().zip(&c).map(|(m, c)| diff(m, c).rel_rms).collect();
        let ties = lockstep::jobs::mlx::nearest_ties(&routing, rows.len());
        println!("row  mlx-cpu rel_rms  nearest MLX routing tie (gap, MoE layer)");
        for (r, d) in rows.iter().enumerate() {
            println!("{r:>3}  {d:.3e}        {:?}", ties[r]);
        }
        match lockstep::verify::rows::judge_rows(&rows, &ties, name) {
            rows::RowVerdict::AllWithin { worst } => {
                println!(
                    "{spec}: all {} rows within {name} {limit} (worst {worst:.3e})",
                    rows.len()
                );
                Ok(RowVerdict::AllWithin)
            }
            rows::RowVerdict::RoutingNearTie {
                row,
                value,
                worst_before,
                gap,
                layer,
            } => {
                println!(
                    "{spec}: rows 0..{row} within {name} {limit} (worst {worst_before:.3e}); row {row} ({value:.3e}) follows a routing \
                     near-tie (gap {gap:.3e} at MoE layer {layer}, {tie_name} {tie}); later rows not judged"
                );
                Ok(RowVerdict::RoutingNearTie { row, gap, layer })
            }
            rows::RowVerdict::Outside {
                row,
                value,
                nearest_tie,
            } => Err(format!(
                "{spec}: MLX logits row {row} is {value:.3e} (relative RMS) from the CPU reference, above {name} {limit}, \
                 and no routing near-tie explains it (nearest MLX routing tie of that row: {nearest_tie:?}, {tie_name} {tie})"
            )),
        }
    }

    /// (a) MLX graph vs CPU bf16, teacher-forced: every level reported
    /// against the reference and f64 truth; rows of logits judged by
    /// `judge_rows`.
    pub fn logits_parity(spec: &str) {
        let seq = sequence(spec);
        let cpu = cpu_engine(spec, Numerics::Bf16);
        let mlx = mlx_engine(spec, MlxFaults::default());
        assert_eq!(
            cpu.model_hash, mlx.model_hash,
            "{spec}: engines loaded different models"
        );
        let truth = cpu_engine(spec, Numerics::F64);
        let c = layers_and_logits(&cpu, &seq, AttnPath::Graph);
        let m = layers_and_logits(&mlx, &seq, AttnPath::Graph);
        let t = layers_and_logits(&truth, &seq, AttnPath::Graph);
        println!(
            "{spec}: mlx/bf16/graph vs cpu/bf16/graph, teacher-forced on {} tokens (MLX {})",
            seq.len(),
            mlx.backend.mlx_version()
        );
        println!("level     mlx-cpu rel_rms  max_abs    | mlx-truth rel_rms  cpu-truth rel_rms");
        let levels = m.len();
        for (l, ((m, c), t)) in m.iter().zip(&c).zip(&t).enumerate() {
            let level = if l + 1 == levels {
                "logits".to_string()
            } else {
                format!("layer {l}")
            };
            let (mc, mt, ct) = (diff(m, c), diff(m, t), diff(c, t));
            println!(
                "{level:<9} {:.3e}        {:.3e}  | {:.3e}          {:.3e}",
                mc.rel_rms, mc.max_abs, mt.rel_rms, ct.rel_rms
            );
            assert!(
                mc.finite_ok(),
                "{spec} {level}: non-finite at {:?}",
                mc.first_non_finite
            );
        }
        if let Err(msg) = judge_rows(spec, &cpu, &mlx, &seq) {
            panic!("{msg}");
        }
    }

    /// (b) Fused vs graph q, k, v on MLX from the same inputs, per layer.
    /// Returns the largest RMS seen (for the negative control).
    pub fn fused_vs_graph(spec: &str, faults: MlxFaults, assert_within: bool) -> f64 {
        let seq = sequence(spec);
        let mlx = mlx_engine(spec, faults.clone());
        let truth = cpu_engine(spec, Numerics::F64);
        let limit = tol("fused_vs_graph_rms");
        let rec = mlx
            .record_attention_inputs(&seq, &[AttnPath::Graph, AttnPath::Fused])
            .unwrap();
        let positions: Vec<usize> = (0..seq.len()).collect();
        println!(
            "{spec} mlx/bf16 op level{}: fused vs graph RMS (fused_vs_graph_rms = {limit:e}); both vs f64 truth on the same input",
            if faults == MlxFaults::default() { String::new() } else { format!(" with planted {faults:?}") }
        );
        println!("layer  q          k          v          | q graph-truth  q fused-truth  k graph-truth  k fused-truth");
        let mut largest = 0.0f64;
        for l in &rec {
            let (g, f) = (&l.by_path[0].1, &l.by_path[1].1);
            let t = truth
                .attention_inputs_from_host(l.layer, &l.input, &positions, AttnPath::Graph)
                .unwrap();
            let d: Vec<_> = (0..3).map(|i| diff(&f[i], &g[i])).collect();
            println!(
                "{:>5}  {:.3e}  {:.3e}  {:.3e}  | {:.3e}      {:.3e}      {:.3e}      {:.3e}",
                l.layer,
                d[0].rms,
                d[1].rms,
                d[2].rms,
                diff(&g[0], &t[0]).rms,
                diff(&f[0], &t[0]).rms,
                diff(&g[1], &t[1]).rms,
                diff(&f[1], &t[1]).rms
            );
            for (i, which) in ["q", "k", "v"].iter().enumerate() {
                assert!(
                    d[i].finite_ok(),
                    "{spec} layer {} {which}: non-finite at {:?}",
                    l.layer,
                    d[i].first_non_finite
                );
                largest = largest.max(d[i].rms);
                if assert_within {
                    assert!(
                        d[i].rms < limit,
                        "{spec} layer {} {which}: fused vs graph RMS {:.3e} >= fused_vs_graph_rms {limit:e} (max abs {:.3e} at {})",
                        l.layer,
                        d[i].rms,
                        d[i].max_abs,
                        d[i].max_abs_index
                    );
                }
            }
        }
        largest
    }

    /// (c) Runs the same teacher-forced input `n` times; returns the number
    /// of bitwise-distinct logit results.
    pub fn distinct_logits(e: &Engine<MlxBackend>, seq: &[u32], path: AttnPath, n: usize) -> usize {
        let mut seen = BTreeSet::new();
        for _ in 0..n {
            let logits = e
                .teacher_forced(seq, path, &mut Capture::default())
                .unwrap();
            let bits: Vec<u64> = logits.concat().iter().map(|v| v.to_bits()).collect();
            seen.insert(bits);
        }
        seen.len()
    }

    pub fn envelope(spec: &str) {
        const RUNS: usize = 20;
        let seq = sequence(spec);
        let mlx = mlx_engine(spec, MlxFaults::default());
        let graph = distinct_logits(&mlx, &seq, AttnPath::Graph, RUNS);
        let fused = distinct_logits(&mlx, &seq, AttnPath::Fused, RUNS);
        // A second backend instance must land on the same bits too.
        let other = mlx_engine(spec, MlxFaults::default());
        let first = |e: &Engine<MlxBackend>, p| {
            e.teacher_forced(&seq, p, &mut Capture::default())
                .unwrap()
                .concat()
        };
        let across = [AttnPath::Graph, AttnPath::Fused]
            .iter()
            .filter(|&&p| {
                let (a, b) = (first(&mlx, p), first(&other, p));
                a.iter()
                    .map(|v| v.to_bits())
                    .ne(b.iter().map(|v| v.to_bits()))
            })
            .count();
        println!(
            "{spec} mlx/bf16 envelope over {RUNS} teacher-forced runs of {} tokens: graph {graph} distinct, fused {fused} distinct; \
             paths differing between two backend instances: {across}",
            seq.len()
        );
        assert_eq!(
            fused, 1,
            "{spec}: the fused path gave {fused} distinct logit results in {RUNS} runs"
        );
        assert_eq!(across, 0, "{spec}: two MLX backends disagree bitwise");
    }

    /// (d) 16 greedy steps vs the CPU bf16 reference.
    pub fn greedy(spec: &str, path: AttnPath) {
        let opts = GenerateOptions {
            max_tokens: 16,
            path,
            ..Default::default()
        };
        let cpu = cpu_engine(spec, Numerics::Bf16)
            .generate(&PROMPT, &opts, &mut |_| {})
            .unwrap();
        let mlx = mlx_engine(spec, MlxFaults::default())
            .generate(&PROMPT, &opts, &mut |_| {})
            .unwrap();
        assert_eq!(cpu.fingerprint.model_hash, mlx.fingerprint.model_hash);
        let name = "near_tie_margin_bf16";
        let limit = tol(name);
        println!("{spec} greedy {}: cpu {:?}", path.name(), cpu.tokens);
        println!("{spec} greedy {}: mlx {:?}", path.name(), mlx.tokens);
        match first_divergence(&mlx.tokens, &cpu.tokens) {
            None => println!(
                "{spec} {}: all {} greedy tokens agree",
                path.name(),
                cpu.tokens.len()
            ),
            Some(d) => {
                let margin = mlx.steps[d.step].margin.min(cpu.steps[d.step].margin);
                println!(
                    "{spec} {}: first divergence at step {} (mlx {}, cpu {}); smaller top-1/top-2 margin {margin:.5} vs {name} {limit}",
                    path.name(),
                    d.step,
                    d.ours,
                    d.theirs
                );
                if (margin as f64) < limit {
                    return;
                }
                // Not a near-tie of the logits. In an MoE model a routing
                // near-tie upstream can still explain it: replay the common
                // context teacher-forced and apply the row rule of (a)
                // (graph paths: MLX's fused path computes the same bits).
                let context = [PROMPT.to_vec(), cpu.tokens[..d.step].to_vec()].concat();
                let verdict = judge_rows(
                    spec,
                    &cpu_engine(spec, Numerics::Bf16),
                    &mlx_engine(spec, MlxFaults::default()),
                    &context,
                );
                match verdict {
                    Ok(RowVerdict::RoutingNearTie { row, gap, layer }) => println!(
                        "{spec} {}: the divergence follows a routing near-tie at row {row} (gap {gap:.3e}, MoE layer {layer})",
                        path.name()
                    ),
                    Ok(RowVerdict::AllWithin) => panic!(
                        "{spec} {}: greedy tokens differ at step {} (mlx {}, cpu {}) where the margin {margin} is not a near-tie \
                         ({name} {limit}) and the teacher-forced logits of the common context all agree within tolerance",
                        path.name(),
                        d.step,
                        d.ours,
                        d.theirs
                    ),
                    Err(msg) => panic!("{spec} {}: greedy divergence at step {}: {msg}", path.name(), d.step),
                }
            }
        }
    }
}

#[cfg(feature = "mlx")]
use mlx::*;

/// Uploads layer `l`'s MoE weights of `model` to `be`.
#[cfg(feature = "mlx")]
fn moe_weights<B: Backend>(
    be: &B,
    model: &Model,
    l: usize,
) -> lockstep::backend::MoeWeights<B::Weight> {
    use lockstep::backend::{ExpertWeights, MoeWeights};
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

mlx_test! {
    /// The MoE op (router, top-k with ties to the lower index, renormalised
    /// weights, experts summed in ascending order) on identical bf16 inputs:
    /// MLX must reproduce the reference bit for bit. Products of bf16 values
    /// are exact in f32 and the router's 64-term sums land on the same bf16
    /// logits, so every routing decision and every rounding point is shared;
    /// any difference is a difference in what the op computes.
    fn mlx_moe_matches_cpu_bf16_bitwise_on_the_same_input() {
        let spec = "synth:tiny-moe";
        let model = Model::open(spec).unwrap();
        let seq = sequence(spec);
        let cpu = lockstep::backend::cpu::CpuBackend::new(Numerics::Bf16);
        let mlx = MlxBackend::new().unwrap();
        // Inputs: the reference's normalised hidden states of each layer.
        let rec = cpu_engine(spec, Numerics::Bf16)
            .record_attention_inputs(&seq, &[AttnPath::Graph])
            .unwrap();
        let hidden = model.config.hidden_size;
        for l in &rec {
            let (wc, wm) = (moe_weights(&cpu, &model, l.layer), moe_weights(&mlx, &model, l.layer));
            let xc = cpu.activation_from_host(&l.input, seq.len(), hidden).unwrap();
            let xm = mlx.activation_from_host(&l.input, seq.len(), hidden).unwrap();
            let oc = cpu.to_host(&cpu.moe(&xc, &wc).unwrap()).unwrap().0;
            let om = mlx.to_host(&mlx.moe(&xm, &wm).unwrap()).unwrap().0;
            let d = diff(&om, &oc);
            println!("{spec} layer {} moe on {} rows: max abs difference {:e}", l.layer, seq.len(), d.max_abs);
            assert!(d.finite_ok(), "layer {}: non-finite at {:?}", l.layer, d.first_non_finite);
            assert_eq!(
                d.max_abs, 0.0,
                "layer {}: MLX's MoE differs from the reference on the same input (max abs {:e} at {})",
                l.layer, d.max_abs, d.max_abs_index
            );
        }
    }
}

mlx_test! {
    fn mlx_backend_reports_mlx_device_bf16_numerics_and_version() {
        let be = MlxBackend::new().unwrap();
        let info = be.device_info();
        println!("{info:?}");
        assert_eq!(info.backend, "mlx");
        assert_eq!(info.numerics, "bf16");
        assert!(info.device.starts_with("MLX cpu"), "{}", info.device);
        let v = info.details.get("mlx").expect("MLX version in details");
        assert!(v.split('.').count() >= 3 && v != "unknown", "MLX version {v:?}");
    }
}

mlx_test! {
    fn mlx_graph_logits_match_cpu_bf16_within_tolerance_on_tiny() {
        logits_parity("synth:tiny");
    }
}

mlx_test! {
    fn mlx_graph_logits_match_cpu_bf16_within_tolerance_on_tiny_moe() {
        logits_parity("synth:tiny-moe");
    }
}

mlx_test! {
    fn mlx_fused_qkv_matches_graph_within_tolerance_on_tiny() {
        fused_vs_graph("synth:tiny", MlxFaults::default(), true);
    }
}

mlx_test! {
    fn mlx_fused_qkv_matches_graph_within_tolerance_on_tiny_moe() {
        fused_vs_graph("synth:tiny-moe", MlxFaults::default(), true);
    }
}

mlx_test! {
    /// Negative control: a fused path that rotates one position too far must
    /// fail the fused-vs-graph check.
    fn mlx_fused_qkv_with_a_planted_rope_offset_fails_the_check() {
        let faults = MlxFaults {
            fused_rope_position_offset: 1,
        };
        let largest = fused_vs_graph("synth:tiny", faults, false);
        let limit = tol("fused_vs_graph_rms");
        assert!(
            largest >= limit,
            "a planted RoPE offset stayed within fused_vs_graph_rms ({largest:.3e} < {limit:e})"
        );
    }
}

mlx_test! {
    fn mlx_teacher_forced_logits_are_bitwise_stable_over_20_runs_on_tiny() {
        envelope("synth:tiny");
    }
}

mlx_test! {
    fn mlx_teacher_forced_logits_are_bitwise_stable_over_20_runs_on_tiny_moe() {
        envelope("synth:tiny-moe");
    }
}

mlx_test! {
    fn mlx_greedy_generation_matches_cpu_bf16_or_diverges_at_a_near_tie_on_tiny() {
        greedy("synth:tiny", AttnPath::Graph);
        greedy("synth:tiny", AttnPath::Fused);
    }
}

mlx_test! {
    fn mlx_greedy_generation_matches_cpu_bf16_or_diverges_at_a_near_tie_on_tiny_moe() {
        greedy("synth:tiny-moe", AttnPath::Graph);
        greedy("synth:tiny-moe", AttnPath::Fused);
    }
}

mlx_test! {
    /// Negative control for the row rule: MLX running a model with other
    /// weights must be refused, not explained away as a routing near-tie.
    fn mlx_row_rule_refuses_logits_of_a_model_with_other_weights() {
        let seq = sequence("synth:tiny-moe");
        let cpu = cpu_engine("synth:tiny-moe:0", Numerics::Bf16);
        let other = mlx_engine("synth:tiny-moe:1", MlxFaults::default());
        assert_ne!(cpu.model_hash, other.model_hash);
        let verdict = judge_rows("synth:tiny-moe (seed 1 vs 0)", &cpu, &other, &seq);
        assert!(verdict.is_err(), "logits of another model passed the row rule");
        println!("refused as expected: {}", verdict.err().unwrap_or_default());
    }
}

/// The committed MLX goldens (golden/*__mlx__*.snap), written by
/// `lockstep golden regen --backend mlx`.
#[cfg(feature = "mlx")]
mod goldens {
    use lockstep::verify::golden::{self, golden_path, GoldenOutcome};
    use std::path::Path;

    pub fn root() -> &'static Path {
        Path::new(env!("CARGO_MANIFEST_DIR"))
    }

    /// Every MLX golden case: a fresh run and the committed golden.
    pub fn fresh_and_committed() -> Vec<(String, golden::GoldenBody, golden::GoldenBody)> {
        lockstep::jobs::mlx::golden_cases()
            .iter()
            .map(|case| {
                let (now, _) = lockstep::jobs::mlx::golden_run(case).unwrap();
                let name = now.name();
                let committed = golden::load(&golden_path(root(), &name)).unwrap_or_else(|e| {
                    panic!("{name}: {e}\n(write it with `cargo run --features mlx -- golden regen --backend mlx`)")
                });
                (name, now, committed)
            })
            .collect()
    }

    pub fn outcome(
        name: &str,
        committed: &golden::GoldenBody,
        now: &golden::GoldenBody,
    ) -> GoldenOutcome {
        let out = golden::compare(committed, now).unwrap_or_else(|e| panic!("{name}: {e}"));
        println!("{name}: {out:?}");
        out
    }
}

mlx_test! {
    fn fresh_mlx_runs_match_the_committed_mlx_goldens() {
        let all = goldens::fresh_and_committed();
        assert_eq!(all.len(), 4, "tiny and tiny-moe on both paths");
        for (name, now, committed) in all {
            assert_eq!(now.backend, "mlx");
            match goldens::outcome(&name, &committed, &now) {
                lockstep::verify::golden::GoldenOutcome::NearTie { step, margin, threshold } => eprintln!(
                    "warning: {name}: tokens differ from step {step}, a recorded near-tie (margin {margin:.4} < {threshold})"
                ),
                // Identical passes; anything else fails with insta's diff and
                // leaves a .snap.new for `cargo insta review`.
                _ => {
                    let mut s = insta::Settings::clone_current();
                    s.set_snapshot_path(goldens::root().join("golden"));
                    s.set_prepend_module_to_snapshot(false);
                    s.bind(|| insta::assert_snapshot!(name.as_str(), now.render()));
                }
            }
        }
    }
}

mlx_test! {
    /// Negative control: an MLX golden with one token changed at a confident
    /// step must fail the check against a fresh MLX run.
    fn an_mlx_golden_edited_at_a_confident_step_fails_the_check() {
        let (name, now, mut g) = goldens::fresh_and_committed().swap_remove(0);
        let step = crate::common::edit_a_confident_step(&mut g);
        let out = goldens::outcome(&name, &g, &now);
        assert!(
            matches!(out, lockstep::verify::golden::GoldenOutcome::Regression { step: s, .. } if s == step),
            "{out:?}"
        );
        assert!(!out.passes());
    }
}
