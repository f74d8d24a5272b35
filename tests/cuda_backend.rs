//! The CUDA backend on a real GPU: logits against the CPU reference, fused
//! vs graph at op level, run-to-run envelopes, batch invariance of the fused
//! kernel. Without a GPU (or without the `cuda` feature) every test says it
//! skipped and why; LOCKSTEP_REQUIRE_GPU=1 turns skips into failures. GPU
//! tests hold one lock, so they never run concurrently on the device.

#[cfg(feature = "cuda")]
mod gpu {
    use lockstep::backend::cpu::{CpuBackend, Numerics};
    use lockstep::backend::cuda::CudaBackend;
    use lockstep::backend::{AttnPath, Backend};
    use lockstep::engine::generate::GenerateOptions;
    use lockstep::engine::Engine;
    use lockstep::model::Model;
    use lockstep::verify::envelope::{envelope, UlpType};
    use lockstep::verify::metrics::diff;
    use lockstep::verify::tolerances::tol;
    use std::sync::{Mutex, MutexGuard};

    static GPU: Mutex<()> = Mutex::new(());
    const PROMPT: [u32; 8] = [1, 17, 42, 99, 3, 250, 7, 8];

    /// The device lock and a backend, or a loud skip.
    fn gpu(test: &str) -> Option<(MutexGuard<'static, ()>, CudaBackend)> {
        let guard = GPU.lock().unwrap_or_else(|p| p.into_inner());
        match std::panic::catch_unwind(|| CudaBackend::new(0)) {
            Ok(Ok(b)) => Some((guard, b)),
            Ok(Err(e)) => skip(test, &e.to_string()),
            Err(_) => skip(test, "the CUDA driver library could not be loaded"),
        }
    }

    fn skip<T>(test: &str, why: &str) -> Option<T> {
        lockstep::skip::skip(lockstep::skip::Need::Gpu, test, why);
        None
    }

    fn sequence(spec: &str) -> Vec<u32> {
        let e = Engine::load(&Model::open(spec).unwrap(), CpuBackend::new(Numerics::Bf16)).unwrap();
        let run = e
            .generate(
                &PROMPT,
                &GenerateOptions {
                    max_tokens: 24,
                    ..Default::default()
                },
                &mut |_| {},
            )
            .unwrap();
        [PROMPT.to_vec(), run.tokens].concat()
    }

    fn logits_match_cpu(spec: &str) {
        let Some((_g, be)) = gpu("cuda_logits_match_cpu_bf16") else {
            return;
        };
        println!("device: {:?}", be.device_info());
        let m = Model::open(spec).unwrap();
        let seq = sequence(spec);
        let cuda = Engine::load(&m, be).unwrap();
        let cpu = Engine::load(&m, CpuBackend::new(Numerics::Bf16)).unwrap();
        assert_eq!(cuda.model_hash, cpu.model_hash);
        let limit = tol("cuda_vs_cpu_bf16_logits_rel_rms");
        for path in [AttnPath::Graph, AttnPath::Fused] {
            let a = cuda
                .teacher_forced(&seq, path, &mut Default::default())
                .unwrap();
            let b = cpu
                .teacher_forced(&seq, path, &mut Default::default())
                .unwrap();
            let worst = a
                .iter()
                .zip(&b)
                .map(|(x, y)| diff(x, y).rel_rms)
                .fold(0.0, f64::max);
            println!(
                "{spec} {}: cuda vs cpu bf16 logits, worst-row rel RMS {worst:.3e}",
                path.name()
            );
            assert!(
                worst < limit,
                "{spec} {}: {worst:.3e} >= cuda_vs_cpu_bf16_logits_rel_rms {limit:e}",
                path.name()
            );
            let opts = GenerateOptions {
                max_tokens: 32,
                path,
                ..Default::default()
            };
            let (ga, gb) = (
                cuda.generate(&PROMPT, &opts, &mut |_| {}).unwrap(),
                cpu.generate(&PROMPT, &opts, &mut |_| {}).unwrap(),
            );
            let thr = tol("near_tie_margin_bf16");
            if let Some(d) = lockstep::verify::divergence::first_divergence(&ga, &gb, thr) {
                println!(
                    "{spec} {}: greedy differs at step {} ({:?})",
                    path.name(),
                    d.step,
                    d.verdict
                );
                assert!(
                    matches!(
                        d.verdict,
                        lockstep::verify::divergence::Verdict::NearTie { .. }
                    ),
                    "{d:?}"
                );
            } else {
                println!(
                    "{spec} {}: greedy agrees with the CPU for 32 steps",
                    path.name()
                );
            }
        }
    }

    #[test]
    fn cuda_logits_match_the_cpu_reference_on_tiny() {
        logits_match_cpu("synth:tiny");
    }

    #[test]
    fn cuda_logits_match_the_cpu_reference_on_tiny_moe() {
        logits_match_cpu("synth:tiny-moe");
    }

    #[test]
    fn cuda_fused_qkv_matches_graph_within_the_contract() {
        for spec in ["synth:tiny", "synth:tiny-moe", "synth:qwen3-0.6b"] {
            let Some((_g, be)) = gpu("cuda_fused_qkv_matches_graph_within_the_contract") else {
                return;
            };
            let m = Model::open(spec).unwrap();
            let e = Engine::load(&m, be).unwrap();
            let seq: Vec<u32> = PROMPT
                .iter()
                .map(|&t| t % m.config.vocab_size as u32)
                .collect();
            let rec = e
                .record_attention_inputs(&seq, &[AttnPath::Graph, AttnPath::Fused])
                .unwrap();
            let limit = tol("fused_vs_graph_rms");
            println!("{spec}: layer  q RMS      k RMS      v RMS");
            for l in &rec {
                let (g, f) = (&l.by_path[0].1, &l.by_path[1].1);
                let d: Vec<_> = (0..3).map(|i| diff(&f[i], &g[i])).collect();
                println!(
                    "{spec}: {:>5}  {:.3e}  {:.3e}  {:.3e}",
                    l.layer, d[0].rms, d[1].rms, d[2].rms
                );
                for (i, t) in ["q", "k", "v"].iter().enumerate() {
                    assert!(
                        d[i].finite_ok() && d[i].rms < limit,
                        "{spec} layer {} {t}: RMS {:.3e}",
                        l.layer,
                        d[i].rms
                    );
                }
            }
        }
    }

    /// N >= 100 runs of the op-level q/k/v of every layer: the deterministic
    /// graph mode and the fused kernel must each give exactly one result.
    #[test]
    fn cuda_op_level_envelopes_have_one_distinct_result() {
        let Some((_g, be)) = gpu("cuda_op_level_envelopes_have_one_distinct_result") else {
            return;
        };
        let m = Model::open("synth:tiny").unwrap();
        let e = Engine::load(&m, be).unwrap();
        for path in [AttnPath::Graph, AttnPath::Fused] {
            let runs: Vec<Vec<f64>> = (0..100)
                .map(|_| {
                    let rec = e.record_attention_inputs(&PROMPT, &[path]).unwrap();
                    rec.iter()
                        .flat_map(|l| l.by_path[0].1.iter().flatten().copied())
                        .collect()
                })
                .collect();
            let env = envelope(
                &format!("qkv(preset=tiny,path={})@cuda", path.name()),
                &runs,
                None,
                UlpType::Bf16,
            );
            println!("{}", env.to_text());
            assert_eq!(env.distinct, 1, "{}", env.to_text());
        }
    }

    /// A row's fused output is bit-identical whether it is computed alone or
    /// among 1..64 rows.
    #[test]
    fn the_fused_kernel_is_batch_invariant() {
        let Some((_g, be)) = gpu("the_fused_kernel_is_batch_invariant") else {
            return;
        };
        let m = Model::open("synth:tiny").unwrap();
        let e = Engine::load(&m, be).unwrap();
        let ids: Vec<u32> = (0..64u32).map(|i| (i * 37 + 5) % 512).collect();
        let all = e.record_attention_inputs(&ids, &[AttnPath::Fused]).unwrap();
        // Layer 0's input for row r depends only on token r (no attention
        // before it), so compare layer 0 of batches 1..64 against the full batch.
        for n in [1usize, 2, 7, 32, 64] {
            let part = e
                .record_attention_inputs(&ids[..n], &[AttnPath::Fused])
                .unwrap();
            for t in 0..3 {
                let w = part[0].by_path[0].1[t].len() / n;
                assert_eq!(
                    part[0].by_path[0].1[t][..n * w],
                    all[0].by_path[0].1[t][..n * w],
                    "batch of {n}: tensor {t} differs from the batch of 64"
                );
            }
        }
    }
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_tests_need_the_cuda_feature() {
    lockstep::skip::skip(
        lockstep::skip::Need::Gpu,
        "cuda_backend",
        "built without the `cuda` feature (cargo test --features cuda on a GPU machine)",
    );
}
