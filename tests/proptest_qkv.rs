//! Property tests of the op-level parity: for random attention geometries,
//! positions out to 40960, epsilons and input magnitudes (with a few huge
//! channels), the fused QKV op must stay within the contract of the graph
//! ops in bf16 and agree to rounding in f64. A failure shrinks and prints the
//! case (including its seed) that replays it.

use lockstep::backend::cpu::{CpuBackend, Numerics};
use lockstep::backend::{AttnDims, Backend};
use lockstep::model::safetensors::{Dtype, HostTensor};
use lockstep::model::synth::mix;
use lockstep::util::bf16_bits;
use lockstep::verify::metrics::diff;
use lockstep::verify::tolerances::{tol, Tol};
use proptest::prelude::*;
use std::borrow::Cow;

#[derive(Debug, Clone)]
struct Case {
    seed: u64,
    head_dim: usize,
    n_kv: usize,
    group: usize,
    hidden: usize,
    start: usize,
    tokens: usize,
    eps: f64,
    /// log10 of the input's typical magnitude.
    magnitude: i32,
    huge_channels: usize,
}

fn seed() -> proptest::test_runner::RngSeed {
    let s = std::env::var("PROPTEST_RNG_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x010c_57e9);
    proptest::test_runner::RngSeed::Fixed(s)
}

fn case() -> impl Strategy<Value = Case> {
    (
        any::<u64>(),
        prop::sample::select(vec![16usize, 32, 64, 128]),
        1usize..=4,
        prop::sample::select(vec![1usize, 2, 4, 8]),
        prop::sample::select(vec![32usize, 64, 96, 128, 256]),
        0usize..40950,
        1usize..=6,
        prop::sample::select(vec![1e-6, 1e-5, 1e-3]),
        -2i32..=2,
        0usize..=3,
    )
        .prop_map(
            |(
                seed,
                head_dim,
                n_kv,
                group,
                hidden,
                start,
                tokens,
                eps,
                magnitude,
                huge_channels,
            )| Case {
                seed,
                head_dim,
                n_kv,
                group,
                hidden,
                start,
                tokens,
                eps,
                magnitude,
                huge_channels,
            },
        )
        // At least 256 elements in q and in k, so an RMS is an RMS and not a
        // handful of roundings (a 32-element k measured 6.9e-3 by chance).
        .prop_filter("tensor too small for an RMS", |c| {
            c.n_kv * c.head_dim * c.tokens >= 256
        })
}

fn bf16_tensor(key: u64, shape: Vec<usize>, f: impl Fn(usize, u64) -> f32) -> HostTensor<'static> {
    let n: usize = shape.iter().product();
    let bytes = (0..n)
        .flat_map(|i| bf16_bits(f(i, mix(key, i as u64))).to_le_bytes())
        .collect();
    HostTensor {
        dtype: Dtype::BF16,
        shape,
        bytes: Cow::Owned(bytes),
    }
}

/// Uniform in [-1, 1) from the top 24 bits.
fn unit(h: u64) -> f32 {
    ((h >> 40) as f32 / 8_388_608.0) - 1.0
}

/// q, k, v by (graph, fused) on one backend.
fn run(c: &Case, numerics: Numerics) -> ([Vec<f64>; 3], [Vec<f64>; 3]) {
    let be = CpuBackend::new(numerics);
    let dims = AttnDims {
        n_heads: c.n_kv * c.group,
        n_kv_heads: c.n_kv,
        head_dim: c.head_dim,
        eps: c.eps,
        rope_theta: 1e6,
    };
    let (qd, kd, h) = (dims.q_dim(), dims.kv_dim(), c.hidden);
    let std = 1.0 / (h as f32).sqrt();
    let w =
        |k: u64, rows: usize| bf16_tensor(c.seed ^ k, vec![rows, h], |_, r| unit(r) * std * 1.7);
    let (wq, wk, wv) = (w(1, qd), w(2, kd), w(3, kd));
    let norm = |k: u64| {
        bf16_tensor(c.seed ^ k, vec![c.head_dim], |_, r| {
            0.4 + 0.8 * (unit(r) * 0.5 + 0.5)
        })
    };
    let (qn, kn) = (norm(4), norm(5));
    let scale = 10f32.powi(c.magnitude);
    let x = bf16_tensor(c.seed ^ 6, vec![c.tokens, h], |i, r| {
        let big = (i % h) < c.huge_channels;
        unit(r) * scale * if big { 64.0 } else { 1.0 }
    });
    let xv: Vec<f64> = x.to_f32_vec().iter().map(|&v| v as f64).collect();
    let xt = be.activation_from_host(&xv, c.tokens, h).unwrap();
    let up = |n: &str, t: &HostTensor| be.upload(n, t).unwrap();
    let positions: Vec<usize> = (c.start..c.start + c.tokens).collect();
    let host = |t| be.to_host(&t).unwrap().0;
    // Graph path: projection, per-head RMSNorm, RoPE, each its own op.
    let graph = |w: &HostTensor, n: &HostTensor| {
        let p = be.linear(&xt, &up("w", w)).unwrap();
        let normed = be.rms_norm(&p, &up("n", n), c.eps).unwrap();
        be.rope(&normed, &positions, c.head_dim, 1e6).unwrap()
    };
    let (q, k) = (graph(&wq, &qn), graph(&wk, &kn));
    let v = be.linear(&xt, &up("v", &wv)).unwrap();
    let packed = be.upload_packed("qkv", &[&wq, &wk, &wv]).unwrap();
    let (fq, fk, fv) = be
        .fused_qkv(
            &xt,
            &packed,
            &up("qn", &qn),
            &up("kn", &kn),
            &dims,
            &positions,
        )
        .unwrap();
    ([host(q), host(k), host(v)], [host(fq), host(fk), host(fv)])
}

proptest! {
    // A fixed seed: CI sees the same cases every run (PROPTEST_RNG_SEED
    // explores others); a failure prints the case, including its weight seed.
    #![proptest_config(ProptestConfig {
        cases: 48,
        rng_seed: seed(),
        failure_persistence: None,
        .. ProptestConfig::default()
    })]

    #[test]
    fn fused_qkv_stays_within_the_contract_in_bf16(c in case()) {
        let (g, f) = run(&c, Numerics::Bf16);
        let limit = tol(Tol::FusedVsGraphRms);
        for (i, t) in ["q", "k"].iter().enumerate() {
            let d = diff(&f[i], &g[i]);
            prop_assert!(d.finite_ok(), "{t}: non-finite at {:?}", d.first_non_finite);
            prop_assert!(d.rms < limit, "{t}: RMS {:.3e} >= fused_vs_graph_rms {limit:e}", d.rms);
        }
        // v is a plain projection: both paths round one f32 dot product, so
        // any difference is a rounding-boundary straddle, a few ulps of |v|.
        let dv = diff(&f[2], &g[2]);
        let vrms = (g[2].iter().map(|x| x * x).sum::<f64>() / g[2].len() as f64).sqrt();
        prop_assert!(dv.rms <= vrms * 2f64.powi(-7), "v: RMS {:.3e} vs |v| {vrms:.3e}", dv.rms);
    }

    #[test]
    fn fused_qkv_equals_graph_to_rounding_in_f64(c in case()) {
        let (g, f) = run(&c, Numerics::F64);
        for (i, t) in ["q", "k", "v"].iter().enumerate() {
            let d = diff(&f[i], &g[i]);
            // Summation order only: relative to the tensor's own size.
            prop_assert!(d.rel_rms < 1e-12, "{t}: relative RMS {:.3e}", d.rel_rms);
        }
    }
}
