//! The transformers oracle: the CPU reference against a reference file that
//! `ci/oracle.py` wrote with transformers on the same weights, and the
//! references built into the binary for the default models.

use crate::backend::{AttnPath, Backend};
use crate::engine::generate::GenerateOptions;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::ident::BackendKind;
use crate::model::Model;
use crate::progress::Progress;
use crate::verify::case::{Case, Key, Op};
use crate::verify::reference::{judge_with_ties, Reference, ReferenceReport};

/// The transformers references built into the binary for the default
/// models, so `lockstep verify` runs anywhere without the repository.
pub const EMBEDDED_REFERENCES: [(&str, &str); 4] = [
    (
        "tiny-float32",
        include_str!("../../golden/reference/tiny-float32.json"),
    ),
    (
        "tiny-bfloat16",
        include_str!("../../golden/reference/tiny-bfloat16.json"),
    ),
    (
        "tiny-moe-float32",
        include_str!("../../golden/reference/tiny-moe-float32.json"),
    ),
    (
        "tiny-moe-bfloat16",
        include_str!("../../golden/reference/tiny-moe-bfloat16.json"),
    ),
];

/// The embedded references of `preset`, parsed.
pub fn embedded_references(preset: &str) -> Result<Vec<Reference>> {
    EMBEDDED_REFERENCES
        .iter()
        .filter(|(n, _)| n.rsplit_once('-').map(|x| x.0) == Some(preset))
        .map(|(name, text)| {
            serde_json::from_str(text)
                .map_err(|e| Error::invalid(format!("embedded reference {name}"), e.to_string()))
        })
        .collect()
}

/// The case of a reference comparison.
pub fn oracle_case(reference: &Reference) -> Case {
    Case::new(Op::Transformers, BackendKind::Cpu)
        .preset(&reference.preset)
        .with(Key::Dtype, reference.dtype)
        .numerics(reference.dtype.numerics())
}

/// `e` (the CPU reference in the arithmetic the reference's dtype calls for)
/// teacher-forced on the reference's tokens and greedily from its prompt,
/// both judged against the reference.
pub fn compare_on<B: Backend>(e: &Engine<B>, reference: &Reference) -> Result<ReferenceReport> {
    let want = reference.dtype.numerics();
    if e.backend.numerics() != want {
        return Err(Error::invalid(
            "reference comparison",
            format!(
                "a {} reference is compared with a run in {want}, not {} ({})",
                reference.dtype,
                e.backend.numerics(),
                e.backend.kind()
            ),
        ));
    }
    e.backend.record_routing(true);
    let logits = e.teacher_forced(
        &reference.teacher_tokens(),
        AttnPath::Graph,
        &mut Default::default(),
    );
    let log = e.backend.take_routing_log();
    e.backend.record_routing(false);
    let logits = logits?;
    let ties = super::accelerator::nearest_ties(&log, logits.len());
    let opts = GenerateOptions {
        max_tokens: reference.tokens.len(),
        ..Default::default()
    };
    let mut p = Progress::new("greedy", reference.tokens.len());
    let ours = e.generate(&reference.prompt, &opts, &mut |i| p.set(i))?;
    let from = reference.prompt.len() - 1;
    judge_with_ties(
        reference,
        &logits[from..],
        &ours,
        ties.get(from..).unwrap_or_default(),
    )
}

/// `compare_on` for a model loaded on `target`.
pub fn compare_with_reference_on(
    reference: &Reference,
    model: &Model,
    target: super::fixture::Target,
) -> Result<ReferenceReport> {
    struct Job<'a>(&'a Reference);
    impl super::fixture::EngineJob for Job<'_> {
        type Output = ReferenceReport;
        fn run<B: Backend>(self, e: &Engine<B>) -> Result<ReferenceReport> {
            compare_on(e, self.0)
        }
    }
    super::fixture::run_on(model, target, Job(reference))
}

/// `compare_on` for a model loaded here.
pub fn compare_with_reference(reference: &Reference, model: &Model) -> Result<ReferenceReport> {
    compare_on(
        &super::load_cpu(model, reference.dtype.numerics())?,
        reference,
    )
}
