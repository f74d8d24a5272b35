//! Checkpoints written by transformers' own `save_pretrained` (committed in
//! tests/checkpoints/, made by ci/hf_checkpoints.py; shapes no preset uses:
//! head_dim 48, 80 and 256, GQA 1, 2 and 4, odd vocabularies, tied and
//! untied heads, an MoE model without top-k renormalisation, MoE on every
//! second layer and a dense `mlp_only_layers` layer). Each folder holds
//! transformers' float64 and float32 greedy runs as references; the CPU
//! reference's f64 truth must match both within their named bounds.

use lockstep::jobs::oracle::compare_with_reference;
use lockstep::model::Model;
use lockstep::verify::reference::Reference;
use std::path::{Path, PathBuf};

/// (folder, its reference files), sorted, so the order never depends on
/// the file system's.
fn checkpoints() -> Vec<(PathBuf, Vec<PathBuf>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/checkpoints");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs.into_iter()
        .map(|d| {
            let mut refs: Vec<PathBuf> = std::fs::read_dir(&d)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("reference-") && n.ends_with(".json"))
                })
                .collect();
            refs.sort();
            (d, refs)
        })
        .collect()
}

#[test]
fn every_transformers_written_checkpoint_matches_transformers_in_float64_and_float32() {
    let all = checkpoints();
    assert!(
        all.len() >= 4,
        "tests/checkpoints holds {} folders",
        all.len()
    );
    for (dir, refs) in all {
        assert_eq!(refs.len(), 2, "{}: {refs:?}", dir.display());
        let m = Model::open(dir.to_str().unwrap()).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            m.unexpected_tensors.is_empty(),
            "{}: {:?}",
            dir.display(),
            m.unexpected_tensors
        );
        for path in refs {
            let r = Reference::load(&path).unwrap();
            let report = compare_with_reference(&r, &m).unwrap();
            println!(
                "{} {}: worst rel RMS {:.3e} ({} = {:e}); tokens {}",
                r.preset,
                r.dtype,
                report.worst_rel_rms,
                report.rel_rms_tolerance.0,
                report.rel_rms_tolerance.1,
                if report.first_divergence.is_none() {
                    "the same".to_string()
                } else {
                    format!("part at {:?}", report.first_divergence)
                }
            );
            assert!(report.pass, "{}", report.to_text());
        }
    }
}

/// The float64 bound bites: one sampled logit of one step moved by 0.1%
/// (a perturbation no correct float64 run shows) fails the comparison,
/// where the unperturbed reference passes (the test above).
#[test]
fn a_float64_reference_moved_by_a_thousandth_fails() {
    let (dir, refs) = checkpoints().into_iter().next().unwrap();
    let path = refs
        .iter()
        .find(|p| p.to_str().unwrap().ends_with("reference-float64.json"))
        .unwrap();
    let mut r = Reference::load(path).unwrap();
    let m = Model::open(dir.to_str().unwrap()).unwrap();
    let step = &mut r.steps[3];
    let i = step
        .sample
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
        .unwrap()
        .0;
    step.sample[i] *= 1.001;
    let report = compare_with_reference(&r, &m).unwrap();
    assert!(!report.pass, "{}", report.to_text());
    assert!(report.worst_rel_rms > report.rel_rms_tolerance.1);
}
