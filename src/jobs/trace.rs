//! `trace` (an engine's intermediates to a dump), `bisect` (two dumps op by
//! op) and `compare --theirs` (another engine's dump against lockstep's f64
//! truth and bf16-faithful reference on exactly its input).

use crate::backend::{AttnPath, Backend, Numerics};
use crate::engine::dump::{Dump, DumpWriter, Manifest, Precision, Selection, FORMAT, VERSION};
use crate::engine::trace::{TraceOp, TraceSink, Traced};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::verify::bisect::{judge_theirs, TheirsReport};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// What a trace wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TraceSummary {
    pub dir: PathBuf,
    pub tensors: usize,
    pub bytes: u64,
    pub manifest: Manifest,
}

/// Traces `tokens` teacher-forced on `e` by `path` into a dump at `dir`.
pub fn trace_to_dir<B: Backend>(
    e: &Engine<B>,
    tokens: &[u32],
    path: AttnPath,
    select: Selection,
    dir: &Path,
) -> Result<TraceSummary> {
    let numerics = e.backend.numerics();
    let mut w = DumpWriter::create(dir, select, tokens.len(), numerics)?;
    let mut sink = WithProgress {
        inner: &mut w,
        progress: std::cell::RefCell::new(crate::progress::Progress::new(
            "tracing layers",
            e.config.num_hidden_layers,
        )),
    };
    e.trace(tokens, path, &mut sink)?;
    let fp = e.fingerprint(path);
    let manifest = Manifest {
        format: FORMAT.into(),
        version: VERSION,
        engine: format!("lockstep {} {}", env!("CARGO_PKG_VERSION"), fp.label()),
        model_hash: e.model_hash.clone(),
        precision: Precision::from(numerics),
        tokens: tokens.to_vec(),
        positions: w.positions().to_vec(),
        fingerprint: Some(serde_json::to_value(&fp).expect("fingerprint serialises")),
    };
    let tensors = w.finish(&manifest)?;
    let bytes = std::fs::metadata(dir.join(crate::engine::dump::TENSORS))
        .map_err(|e| Error::io(dir, e))?
        .len();
    Ok(TraceSummary {
        dir: dir.to_path_buf(),
        tensors,
        bytes,
        manifest,
    })
}

/// Shows the layer being traced (the pass asks `wants` for every op).
struct WithProgress<'a> {
    inner: &'a mut DumpWriter,
    progress: std::cell::RefCell<crate::progress::Progress>,
}

impl TraceSink for WithProgress<'_> {
    fn wants(&self, layer: Option<usize>, op: TraceOp) -> bool {
        if let (Some(l), TraceOp::Output) = (layer, op) {
            self.progress.borrow_mut().set(l + 1);
        }
        self.inner.wants(layer, op)
    }

    fn put(&mut self, t: Traced) -> Result<()> {
        self.inner.put(t)
    }
}

/// A scratch folder removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "lockstep-{tag}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Judges another engine's dump: lockstep's f64 truth and its bf16-faithful
/// reference (CPU, graph path) are traced on the dump's tokens, for exactly
/// the layers, ops and rows the dump holds, then compared op by op. The
/// dump must carry `model`'s hash.
pub fn compare_theirs(model: &Model, theirs_dir: &Path) -> Result<TheirsReport> {
    let reference = super::load_cpu(model, Numerics::Bf16)?;
    let theirs = Dump::open(theirs_dir, &model.config, &reference.model_hash)?;
    let select = Selection {
        layers: Some(
            theirs
                .entries
                .iter()
                .filter_map(|e| e.0)
                .collect::<BTreeSet<_>>(),
        )
        .filter(|l| !l.is_empty()),
        ops: Some(
            theirs
                .entries
                .iter()
                .map(|e| e.1)
                .collect::<BTreeSet<TraceOp>>(),
        ),
        positions: Some(theirs.manifest.positions.clone()),
    };
    let tokens = theirs.manifest.tokens.clone();
    let (rd, td) = (Scratch::new("reference"), Scratch::new("truth"));
    trace_to_dir(&reference, &tokens, AttnPath::Graph, select.clone(), &rd.0)?;
    let hash = reference.model_hash.clone();
    drop(reference);
    let truth = super::load_cpu(model, Numerics::F64)?;
    trace_to_dir(&truth, &tokens, AttnPath::Graph, select, &td.0)?;
    drop(truth);
    let r = Dump::open(&rd.0, &model.config, &hash)?;
    let t = Dump::open(&td.0, &model.config, &hash)?;
    judge_theirs(&theirs, &r, &t)
}
