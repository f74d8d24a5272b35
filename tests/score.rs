//! `score`: teacher-forced logits of a given token sequence, one step per
//! scored token, at the run's own precision.

mod common;
use common::PROMPT;
use lockstep::backend::cpu::{CpuBackend, Numerics};
use lockstep::backend::AttnPath;
use lockstep::engine::generate::GenerateOptions;
use lockstep::jobs::load;
use lockstep::jobs::score::score;
use lockstep::model::Model;

/// A greedy run's own tokens score at rank 0 with the run's own logits (bit
/// for bit: the same teacher-forced rows a decode step reproduces on the
/// CPU reference), and log-probabilities that normalise.
#[test]
fn a_greedy_runs_tokens_score_at_rank_zero_with_its_logits() {
    let m = Model::open("synth:tiny").unwrap();
    let e = load(&m, CpuBackend::new(Numerics::Bf16)).unwrap();
    for path in AttnPath::ALL {
        let opts = GenerateOptions {
            max_tokens: 12,
            path,
            keep_logits: true,
            ..Default::default()
        };
        let run = e.generate(&PROMPT, &opts, &mut |_| {}).unwrap();
        let s = score(&e, &PROMPT, &run.tokens, path, 8, true).unwrap();
        assert_eq!(s.tokens, run.tokens);
        for (i, (st, g)) in s.steps.iter().zip(&run.steps).enumerate() {
            assert_eq!((st.rank, st.greedy), (0, g.token), "step {i}");
            assert_eq!(st.top, g.top, "step {i}");
            let row = st.logits.as_ref().unwrap();
            let recorded: Vec<f64> = g
                .logits
                .as_ref()
                .unwrap()
                .iter()
                .map(|&v| v as f64)
                .collect();
            assert_eq!(row, &recorded, "step {i}: the decode step's logits");
            let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = row.iter().map(|&v| (v - max).exp()).sum();
            let total: f64 = row.iter().map(|&v| (v - max - z.ln()).exp()).sum();
            assert!((total - 1.0).abs() < 1e-12, "step {i}: {total}");
            assert!(st.logprob <= 0.0);
        }
    }
}

/// The control: a token other than the greedy choice ranks below it with a
/// smaller log-probability; the f64 truth keeps its logits in f64 (not
/// rounded to f32 as generate records them); an id past the vocabulary is
/// refused, naming it.
#[test]
fn another_token_ranks_lower_f64_keeps_f64_and_bad_ids_are_refused() {
    let m = Model::open("synth:tiny").unwrap();
    let e = load(&m, CpuBackend::new(Numerics::F64)).unwrap();
    let best = score(&e, &PROMPT, &[0], AttnPath::Graph, 8, true)
        .unwrap()
        .steps[0]
        .greedy;
    let other = (best + 1) % m.config.vocab_size as u32;
    let s = score(&e, &PROMPT, &[best, other], AttnPath::Graph, 8, true).unwrap();
    let alt = score(&e, &PROMPT, &[other], AttnPath::Graph, 8, true).unwrap();
    assert!(alt.steps[0].rank > 0 && alt.steps[0].logprob < s.steps[0].logprob);
    let row = s.steps[0].logits.as_ref().unwrap();
    assert!(
        row.iter().any(|&v| (v as f32) as f64 != v),
        "f64 logits were rounded to f32"
    );
    let vocab = m.config.vocab_size as u32;
    let err = score(&e, &PROMPT, &[vocab], AttnPath::Graph, 8, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&vocab.to_string()), "{err}");
    assert!(score(&e, &PROMPT, &[], AttnPath::Graph, 8, false).is_err());
}
