//! `trace`, the dump format, `bisect` and `compare --theirs` on the CPU:
//! a trace holds the teacher-forced pass bit for bit, f64 stays f64,
//! selections keep what was asked, a dump is checked against its model,
//! and a perturbed op is located at its layer and op (negative controls).

mod common;

use common::{cpu_engine, scratch};
use lockstep::backend::cpu::Numerics;
use lockstep::backend::AttnPath;
use lockstep::engine::dump::{Dump, Manifest, Selection, MANIFEST, TENSORS};
use lockstep::engine::trace::TraceOp;
use lockstep::engine::Capture;
use lockstep::jobs::trace::{compare_theirs, trace_to_dir};
use lockstep::model::safetensors::{write_file, Dtype, SafeFile, TensorSpec};
use lockstep::model::Model;
use lockstep::verify::bisect::bisect;
use std::path::{Path, PathBuf};

const TOKENS: [u32; 6] = [1, 7, 42, 99, 300, 5];

fn traced(
    name: &str,
    spec: &str,
    numerics: Numerics,
    path: AttnPath,
    select: Selection,
) -> PathBuf {
    let e = cpu_engine(spec, numerics);
    let dir = scratch(name);
    trace_to_dir(&e, &TOKENS, path, select, &dir).unwrap();
    dir
}

fn open(dir: &Path, spec: &str) -> lockstep::Result<Dump> {
    let e = cpu_engine(spec, Numerics::Bf16);
    Dump::open(dir, &e.config, &e.model_hash)
}

/// Layer outputs, q/k/v and logits of a trace are the teacher-forced
/// pass's, bit for bit, on both paths and a dense and an MoE model; the
/// fused path has no pre-norm projections, the graph path has them all.
#[test]
fn a_trace_holds_the_teacher_forced_pass_bit_for_bit() {
    for spec in ["synth:tiny", "synth:tiny-moe"] {
        for path in AttnPath::ALL {
            let dir = traced(
                &format!("trace-{}-{}", &spec[6..], path.name()),
                spec,
                Numerics::Bf16,
                path,
                Selection::default(),
            );
            let d = open(&dir, spec).unwrap();
            let e = cpu_engine(spec, Numerics::Bf16);
            let mut cap = Capture::all();
            let logits = e.teacher_forced(&TOKENS, path, &mut cap).unwrap();
            let flat: Vec<f64> = logits.concat();
            assert_eq!(
                d.get(None, TraceOp::Logits).unwrap(),
                flat,
                "{spec} {path:?} logits"
            );
            for (l, out) in cap.layers.unwrap().iter().enumerate() {
                assert_eq!(
                    &d.get(Some(l), TraceOp::Output).unwrap(),
                    out,
                    "{spec} layer {l}"
                );
            }
            for (l, qkv) in cap.qkv.unwrap().iter().enumerate() {
                for (op, want) in [TraceOp::Q, TraceOp::K, TraceOp::V].into_iter().zip(qkv) {
                    assert_eq!(
                        &d.get(Some(l), op).unwrap(),
                        want,
                        "{spec} layer {l} {op:?}"
                    );
                }
            }
            assert_eq!(d.has(Some(0), TraceOp::QProj), path == AttnPath::Graph);
            let moe = e.config.moe.is_some();
            assert_eq!(d.has(Some(0), TraceOp::RouterLogits), moe);
            assert_eq!(d.has(Some(0), TraceOp::Experts), moe);
        }
    }
}

/// An f64 trace is written as F64, values that f32 cannot hold included.
#[test]
fn f64_traces_stay_f64() {
    let dir = traced(
        "trace-f64",
        "synth:tiny",
        Numerics::F64,
        AttnPath::Graph,
        Selection::default(),
    );
    let f = SafeFile::open(&dir.join(TENSORS)).unwrap();
    let t = f.tensor("layers.0.q").unwrap();
    assert_eq!(t.dtype, Dtype::F64);
    let v = t.to_f64_vec();
    assert!(
        v.iter().any(|&x| x as f32 as f64 != x),
        "every value f32-exact"
    );
    // Control: a bf16 trace's values are f32-exact (stored as F32).
    let dir = traced(
        "trace-bf16",
        "synth:tiny",
        Numerics::Bf16,
        AttnPath::Graph,
        Selection::default(),
    );
    let f = SafeFile::open(&dir.join(TENSORS)).unwrap();
    assert_eq!(f.tensor("layers.0.q").unwrap().dtype, Dtype::F32);
}

/// --layers, --ops and --positions keep exactly those tensors and rows,
/// with the full trace's values.
#[test]
fn a_selection_keeps_only_the_asked_layers_ops_and_rows() {
    let full = traced(
        "trace-full",
        "synth:tiny",
        Numerics::Bf16,
        AttnPath::Graph,
        Selection::default(),
    );
    let sel = Selection {
        layers: Some([1].into()),
        ops: Some([TraceOp::Q, TraceOp::Logits].into()),
        positions: Some(vec![0, 3]),
    };
    let part = traced(
        "trace-part",
        "synth:tiny",
        Numerics::Bf16,
        AttnPath::Graph,
        sel,
    );
    let (f, p) = (
        open(&full, "synth:tiny").unwrap(),
        open(&part, "synth:tiny").unwrap(),
    );
    assert_eq!(
        p.entries,
        vec![(Some(1), TraceOp::Q), (None, TraceOp::Logits)]
    );
    assert_eq!(p.manifest.positions, vec![0, 3]);
    for (layer, op) in p.entries.clone() {
        let (fv, pv) = (f.get(layer, op).unwrap(), p.get(layer, op).unwrap());
        let w = fv.len() / TOKENS.len();
        let want: Vec<f64> = [0, 3]
            .iter()
            .flat_map(|&r| fv[r * w..(r + 1) * w].to_vec())
            .collect();
        assert_eq!(pv, want, "{op:?}");
    }
}

/// Copies the dump `src` to `dst`, tensor `name` renamed `to` and its
/// values passed through `edit`.
fn rewrite(src: &Path, dst: &Path, name: &str, to: &str, edit: impl Fn(&mut [f64])) {
    std::fs::create_dir_all(dst).unwrap();
    std::fs::copy(src.join(MANIFEST), dst.join(MANIFEST)).unwrap();
    let f = SafeFile::open(&src.join(TENSORS)).unwrap();
    let named = |n: &str| {
        if n == name {
            to.to_string()
        } else {
            n.to_string()
        }
    };
    let specs: Vec<TensorSpec> = f
        .names()
        .map(|n| {
            let t = f.tensor(n).unwrap();
            TensorSpec {
                name: named(n),
                dtype: t.dtype,
                shape: t.shape.clone(),
            }
        })
        .collect();
    let sources: Vec<String> = f.names().cloned().collect();
    let mut next = sources.iter();
    write_file(&dst.join(TENSORS), &specs, &Default::default(), |_| {
        let n = next.next().unwrap();
        let t = f.tensor(n).unwrap();
        let mut v = t.to_f64_vec();
        if n == name {
            edit(&mut v);
        }
        Ok(match t.dtype {
            Dtype::F64 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            _ => v.iter().flat_map(|&x| (x as f32).to_le_bytes()).collect(),
        })
    })
    .unwrap();
}

fn perturb(src: &Path, dst: &Path, name: &str, edit: impl Fn(&mut [f64])) {
    rewrite(src, dst, name, name, edit)
}

/// The first op where `a` parts from `b` (both dumps of `spec`).
fn first_outside(a: &Path, b: &Path, spec: &str) -> Option<String> {
    let r = bisect(&open(a, spec).unwrap(), &open(b, spec).unwrap(), None).unwrap();
    println!("{}", r.to_markdown());
    r.first_outside
}

/// lockstep's own fused-path dump, judged as another engine's, is ordinary
/// bf16 error; with one op scaled by 1.1 at layer 1 it fails there, and
/// `bisect` against the clean dump names that op first.
#[test]
fn compare_theirs_passes_a_correct_dump_and_locates_a_perturbed_op() {
    for spec in ["synth:tiny", "synth:tiny-moe"] {
        let m = Model::open(spec).unwrap();
        let clean = traced(
            &format!("theirs-{}", &spec[6..]),
            spec,
            Numerics::Bf16,
            AttnPath::Fused,
            Selection::default(),
        );
        let r = compare_theirs(&m, &clean).unwrap();
        println!("{}", r.to_markdown());
        assert!(r.pass, "{spec}: {:?}", r.first_failing);
        assert_eq!(r.logits_pass, Some(true));
        assert!(r.rows.len() > 20, "{} rows judged", r.rows.len());
        for op in ["attention", "mlp", "q"] {
            let name = format!("layers.1.{op}");
            let bad = scratch(&format!("theirs-{}-bad-{op}", &spec[6..]));
            perturb(&clean, &bad, &name, |v| {
                v.iter_mut().for_each(|x| *x *= 1.1)
            });
            let r = compare_theirs(&m, &bad).unwrap();
            assert_eq!(
                r.first_failing.as_deref(),
                Some(name.as_str()),
                "{spec}\n{}",
                r.to_markdown()
            );
            assert!(!r.pass);
            assert_eq!(first_outside(&bad, &clean, spec), Some(name.clone()));
        }
        // Control for bisect: the clean dump against itself parts nowhere.
        assert_eq!(first_outside(&clean, &clean, spec), None);
    }
}

/// A routing change is located at the experts op of its layer.
#[test]
fn bisect_names_a_changed_expert_choice() {
    let spec = "synth:tiny-moe";
    let clean = traced(
        "route-clean",
        spec,
        Numerics::Bf16,
        AttnPath::Graph,
        Selection::default(),
    );
    let bad = scratch("route-bad");
    perturb(&clean, &bad, "layers.0.experts", |v| {
        v[0] = if v[0] == 0.0 { 1.0 } else { 0.0 }
    });
    assert_eq!(
        first_outside(&bad, &clean, spec).as_deref(),
        Some("layers.0.experts")
    );
}

/// Dumps written by transformers' own Qwen3 and Qwen3-MoE (bfloat16, CPU,
/// through ci/hf_dump.py's hooks) on transformers-written checkpoints are
/// ordinary bf16 error at every op.
#[test]
fn transformers_dumps_are_ordinary_bf16_error() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    for (dump, model) in [
        ("transformers-dense-hd48-bf16", "dense-hd48-gqa2-untied"),
        ("transformers-moe-no-renorm-bf16", "moe-no-renorm-sparse2"),
    ] {
        let m = Model::open(root.join("checkpoints").join(model).to_str().unwrap()).unwrap();
        let r = compare_theirs(&m, &root.join("dumps").join(dump)).unwrap();
        println!("{}", r.to_markdown());
        assert!(r.pass, "{dump}: {:?}", r.first_failing);
        assert!(r.rows.len() >= 30, "{dump}: {} rows", r.rows.len());
        assert!(r.unjudged.is_empty(), "{:?}", r.unjudged);
    }
}

type ManifestEdit = Box<dyn Fn(&mut serde_json::Value)>;

fn manifest_of(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join(MANIFEST)).unwrap()).unwrap()
}

fn with_manifest(src: &Path, name: &str, edit: impl Fn(&mut serde_json::Value)) -> PathBuf {
    let dst = scratch(name);
    std::fs::copy(src.join(TENSORS), dst.join(TENSORS)).unwrap();
    let mut m = manifest_of(src);
    edit(&mut m);
    std::fs::write(dst.join(MANIFEST), serde_json::to_string(&m).unwrap()).unwrap();
    dst
}

/// A dump is never trusted: another model, bad tokens, rows, names,
/// shapes and fields are refused with the file and field named.
#[test]
fn hostile_dumps_are_refused_by_name() {
    let spec = "synth:tiny";
    let clean = traced(
        "hostile-clean",
        spec,
        Numerics::Bf16,
        AttnPath::Graph,
        Selection::default(),
    );
    let cases: Vec<(&str, ManifestEdit, &str)> = vec![
        (
            "other-model",
            Box::new(|m| m["model_hash"] = "xxh3:0".into()),
            "model_hash",
        ),
        (
            "token-past-vocab",
            Box::new(|m| m["tokens"][2] = 100000.into()),
            "past the vocabulary",
        ),
        (
            "no-tokens",
            Box::new(|m| m["tokens"] = serde_json::json!([])),
            "tokens",
        ),
        (
            "rows-unsorted",
            Box::new(|m| m["positions"] = serde_json::json!([1, 0, 2, 3, 4, 5])),
            "positions",
        ),
        (
            "row-past-end",
            Box::new(|m| m["positions"] = serde_json::json!([0, 1, 2, 3, 4, 6])),
            "positions",
        ),
        (
            "format",
            Box::new(|m| m["format"] = "other".into()),
            "format",
        ),
        ("version", Box::new(|m| m["version"] = 9.into()), "version"),
        (
            "unknown-field",
            Box::new(|m| m["extra"] = 1.into()),
            "unknown field",
        ),
        (
            "fewer-rows",
            Box::new(|m| m["positions"] = serde_json::json!([0, 1, 2])),
            "shape",
        ),
    ];
    for (name, edit, want) in cases {
        let dir = with_manifest(&clean, &format!("hostile-{name}"), edit);
        let msg = open(&dir, spec)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        println!("{name}: {msg}");
        assert!(
            msg.contains(want) && msg.contains(dir.to_str().unwrap()),
            "{name}: {msg:?}"
        );
    }
    // Tensor names and shapes.
    for (name, from, to, want) in [
        ("bad-name", "logits", "logitz", "not a dump name"),
        ("bad-layer", "layers.0.q", "layers.9.q", "layers"),
        (
            "leading-zero",
            "layers.1.q",
            "layers.01.q",
            "not a dump name",
        ),
        (
            "router-on-dense",
            "layers.0.q",
            "layers.0.router_logits",
            "no such tensor",
        ),
    ] {
        let dst = scratch(&format!("hostile-{name}"));
        rewrite(&clean, &dst, from, to, |_| {});
        let msg = open(&dst, spec)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        println!("{name}: {msg}");
        assert!(
            msg.contains(want) && msg.contains(TENSORS),
            "{name}: {msg:?}"
        );
    }
    // Two dumps of different tokens are not compared.
    let other = with_manifest(&clean, "hostile-other-tokens", |m| {
        m["tokens"][0] = 2.into()
    });
    let msg = bisect(
        &open(&clean, spec).unwrap(),
        &open(&other, spec).unwrap(),
        None,
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(msg.contains("different tokens"), "{msg}");
    // The manifest is typed: it deserialises into `Manifest`.
    let _: Manifest = serde_json::from_value(manifest_of(&clean)).unwrap();
}

/// `compare --theirs` on expert choices: a row routed to other experts at
/// a confident router decision fails at that layer's `experts`; the same
/// change where their router logits tie at the top-k boundary is excused
/// as a near-tie (`moe_routing_near_tie_bf16`).
#[test]
fn compare_theirs_excuses_a_different_expert_choice_only_at_a_near_tie() {
    let spec = "synth:tiny-moe";
    let m = Model::open(spec).unwrap();
    let clean = traced(
        "routing-theirs",
        spec,
        Numerics::Bf16,
        AttnPath::Graph,
        Selection::default(),
    );
    let d = open(&clean, spec).unwrap();
    let (logits, experts) = (
        d.get(Some(0), TraceOp::RouterLogits).unwrap(),
        d.get(Some(0), TraceOp::Experts).unwrap(),
    );
    let (n_exp, k) = (logits.len() / TOKENS.len(), experts.len() / TOKENS.len());
    // The most confident row: the largest top-k boundary gap.
    let f: Vec<f32> = logits.iter().map(|&v| v as f32).collect();
    let rec = lockstep::backend::routing_record(&f, n_exp, k);
    let row = (0..rec.len())
        .max_by(|&a, &b| rec[a].boundary_gap.total_cmp(&rec[b].boundary_gap))
        .unwrap();
    println!("row {row}: gap {}", rec[row].boundary_gap);
    assert!(rec[row].boundary_gap > 0.03);
    let row_logits = &logits[row * n_exp..(row + 1) * n_exp];
    let mut order: Vec<usize> = (0..n_exp).collect();
    order.sort_by(|&a, &b| row_logits[b].total_cmp(&row_logits[a]));
    let (last_in, first_out) = (order[k - 1], order[k]);
    // Route the row to the first expert outside the top k instead.
    let mut chosen: Vec<usize> = order[..k]
        .iter()
        .copied()
        .filter(|&e| e != last_in)
        .collect();
    chosen.push(first_out);
    chosen.sort_unstable();
    let swap = |v: &mut [f64]| {
        for (i, &e) in chosen.iter().enumerate() {
            v[row * k + i] = e as f64;
        }
    };
    let moved = scratch("routing-moved");
    perturb(&clean, &moved, "layers.0.experts", swap);
    let r = compare_theirs(&m, &moved).unwrap();
    assert_eq!(
        r.first_failing.as_deref(),
        Some("layers.0.experts"),
        "{}",
        r.to_markdown()
    );
    // The same choice, with their router logits tied at the boundary.
    let tied = scratch("routing-tied");
    perturb(&moved, &tied, "layers.0.router_logits", |v| {
        v[row * n_exp + last_in] = v[row * n_exp + first_out];
    });
    let r = compare_theirs(&m, &tied).unwrap();
    let experts_row = r
        .rows
        .iter()
        .find(|x| x.label() == "layers.0.experts")
        .unwrap();
    assert!(experts_row.pass, "{}", r.to_markdown());
    assert_eq!(experts_row.theirs_routing.unwrap().near_ties, 1);
}
