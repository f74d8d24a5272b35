//! The dump format (docs/dump-format.md): a folder with `manifest.json` and
//! `tensors.safetensors`, written by `lockstep trace` and by any other engine
//! that wants lockstep to judge its intermediates. Tensor names are
//! `layers.L.OP` and `OP` (`TraceOp::name`), each `[positions, width]`: the
//! rows of the manifest's positions, in its order.
//!
//! Reading never trusts a dump: the manifest is bounded and typed, the
//! safetensors file goes through the checked parser, and every name, shape,
//! token id and the model hash is checked against the model it is read for.

use super::trace::{TraceOp, TraceSink, Traced};
use crate::error::{Error, Result};
use crate::ident::Numerics;
use crate::model::config::Qwen3Config;
use crate::model::safetensors::{write_file, Dtype, SafeFile, TensorSpec};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

pub const FORMAT: &str = "lockstep-dump";
pub const VERSION: u32 = 1;
pub const MANIFEST: &str = "manifest.json";
pub const TENSORS: &str = "tensors.safetensors";
/// A manifest holds a token list and a few strings: 16 MiB is far past any.
const MANIFEST_MAX_BYTES: u64 = 16 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always `lockstep-dump`.
    pub format: String,
    pub version: u32,
    /// Who wrote it, free text ("lockstep 0.1.0 cuda fused", "transformers
    /// 5.17 eager bfloat16").
    pub engine: String,
    /// lockstep's hash of the model the dump was made with (`lockstep info`).
    pub model_hash: String,
    /// The precision the engine computed in.
    pub precision: Precision,
    /// The token ids of the teacher-forced pass, positions 0..
    pub tokens: Vec<u32>,
    /// The rows each tensor holds, ascending.
    pub positions: Vec<usize>,
    /// lockstep's run fingerprint, when lockstep wrote the dump.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<serde_json::Value>,
}

/// The precision an engine computed a dump in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Bfloat16,
    Float16,
    Float32,
    Float64,
}

impl From<Numerics> for Precision {
    fn from(n: Numerics) -> Self {
        match n {
            Numerics::Bf16 => Precision::Bfloat16,
            Numerics::F64 => Precision::Float64,
        }
    }
}

/// Which tensors and rows a trace keeps.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// None: every layer.
    pub layers: Option<BTreeSet<usize>>,
    /// None: every op.
    pub ops: Option<BTreeSet<TraceOp>>,
    /// None: every position.
    pub positions: Option<Vec<usize>>,
}

/// A `TraceSink` that streams the selected tensors to a data file as they
/// come (one tensor in memory at a time) and assembles the dump at
/// `finish`: safetensors header first, then the data copied through.
pub struct DumpWriter {
    dir: PathBuf,
    select: Selection,
    positions: Vec<usize>,
    dtype: Dtype,
    data: std::fs::File,
    data_path: PathBuf,
    specs: Vec<TensorSpec>,
}

impl DumpWriter {
    /// `dtype`: F64 for f64 numerics, F32 otherwise (bf16 and f32 values
    /// are exact in it).
    pub fn create(
        dir: &Path,
        select: Selection,
        tokens: usize,
        numerics: Numerics,
    ) -> Result<Self> {
        let positions = match &select.positions {
            None => (0..tokens).collect(),
            Some(p) => {
                if let Some(bad) = p.iter().find(|&&p| p >= tokens) {
                    return Err(Error::invalid(
                        "--positions",
                        format!("position {bad} is past the {tokens} tokens"),
                    ));
                }
                if p.is_empty() || p.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(Error::invalid(
                        "--positions",
                        "must be ascending, without repeats",
                    ));
                }
                p.clone()
            }
        };
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let data_path = dir.join(".tensors.data.tmp");
        let data = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&data_path)
            .map_err(|e| Error::io(&data_path, e))?;
        Ok(DumpWriter {
            dir: dir.to_path_buf(),
            select,
            positions,
            dtype: if numerics == Numerics::F64 {
                Dtype::F64
            } else {
                Dtype::F32
            },
            data,
            data_path,
            specs: Vec::new(),
        })
    }

    pub fn positions(&self) -> &[usize] {
        &self.positions
    }

    /// Writes the safetensors file and the manifest (each atomically) and
    /// removes the data file. Returns the number of tensors.
    pub fn finish(mut self, manifest: &Manifest) -> Result<usize> {
        let path = self.dir.join(TENSORS);
        let io = |e| Error::io(&self.data_path, e);
        self.data.flush().map_err(io)?;
        self.data.rewind().map_err(io)?;
        let data = &mut self.data;
        let meta = BTreeMap::from([("format".to_string(), FORMAT.to_string())]);
        write_file(&path, &self.specs, &meta, |t| {
            let len = t.shape.iter().product::<usize>() * t.dtype.size();
            let mut buf = vec![0u8; len];
            data.read_exact(&mut buf).map_err(|e| Error::io(&path, e))?;
            Ok(buf)
        })?;
        crate::util::write_json_atomically(&self.dir.join(MANIFEST), manifest)?;
        let _ = std::fs::remove_file(&self.data_path);
        Ok(self.specs.len())
    }
}

impl TraceSink for DumpWriter {
    fn wants(&self, layer: Option<usize>, op: TraceOp) -> bool {
        let layer_ok = match (layer, &self.select.layers) {
            (Some(l), Some(ls)) => ls.contains(&l),
            _ => true,
        };
        layer_ok && self.select.ops.as_ref().is_none_or(|o| o.contains(&op))
    }

    fn put(&mut self, t: Traced) -> Result<()> {
        let mut bytes = Vec::with_capacity(self.positions.len() * t.cols * self.dtype.size());
        for &p in &self.positions {
            for &v in &t.data[p * t.cols..(p + 1) * t.cols] {
                match self.dtype {
                    Dtype::F64 => bytes.extend_from_slice(&v.to_le_bytes()),
                    _ => bytes.extend_from_slice(&(v as f32).to_le_bytes()),
                }
            }
        }
        self.data
            .write_all(&bytes)
            .map_err(|e| Error::io(&self.data_path, e))?;
        self.specs.push(TensorSpec {
            name: t.op.tensor_name(t.layer),
            dtype: self.dtype,
            shape: vec![self.positions.len(), t.cols],
        });
        Ok(())
    }
}

/// A dump read back and checked against a model.
pub struct Dump {
    pub dir: PathBuf,
    pub manifest: Manifest,
    file: SafeFile,
    /// (layer, op) of every tensor, in name order.
    pub entries: Vec<(Option<usize>, TraceOp)>,
}

fn dump_err(path: &Path, field: &str, problem: impl Into<String>) -> Error {
    Error::DumpField {
        path: path.to_path_buf(),
        field: field.to_string(),
        problem: problem.into(),
    }
}

/// The width of `op`'s rows for `cfg`, or None where the model has no such
/// tensor (routing ops of a dense layer).
pub fn op_width(cfg: &Qwen3Config, layer: Option<usize>, op: TraceOp) -> Option<usize> {
    let (hidden, qd, kd) = (
        cfg.hidden_size,
        cfg.num_attention_heads * cfg.head_dim,
        cfg.num_key_value_heads * cfg.head_dim,
    );
    let moe = layer
        .and_then(|l| cfg.layer_is_moe(l).then_some(()))
        .and(cfg.moe.as_ref());
    Some(match op {
        TraceOp::QProj | TraceOp::QNorm | TraceOp::Q | TraceOp::Attention => qd,
        TraceOp::KProj | TraceOp::KNorm | TraceOp::K | TraceOp::V => kd,
        TraceOp::RouterLogits => moe?.num_experts,
        TraceOp::Experts | TraceOp::ExpertWeights => moe?.num_experts_per_tok,
        TraceOp::Logits => cfg.vocab_size,
        _ => hidden,
    })
}

/// `layers.L.OP` or `OP` back to (layer, op).
pub fn parse_name(name: &str) -> Option<(Option<usize>, TraceOp)> {
    match name.strip_prefix("layers.") {
        Some(rest) => {
            let (digits, op) = rest.split_once('.')?;
            let l: usize = digits.parse().ok()?;
            // `layers.01.q` is not `layers.1.q`.
            if l.to_string() != digits {
                return None;
            }
            let op = TraceOp::parse(op)?;
            op.per_layer().then_some((Some(l), op))
        }
        None => {
            let op = TraceOp::parse(name)?;
            (!op.per_layer()).then_some((None, op))
        }
    }
}

impl Dump {
    /// Opens the dump in `dir` for the model `cfg` with hash `model_hash`.
    pub fn open(dir: &Path, cfg: &Qwen3Config, model_hash: &str) -> Result<Self> {
        let mpath = dir.join(MANIFEST);
        let text = crate::util::read_text_bounded(&mpath, MANIFEST_MAX_BYTES)?;
        let manifest: Manifest = serde_json::from_str(&text).map_err(|e| Error::Json {
            path: mpath.clone(),
            source: e,
        })?;
        let m = &manifest;
        if m.format != FORMAT {
            return Err(dump_err(
                &mpath,
                "format",
                format!("{:?}, expected {FORMAT:?}", m.format),
            ));
        }
        if m.version != VERSION {
            return Err(dump_err(
                &mpath,
                "version",
                format!("{}, this lockstep reads {VERSION}", m.version),
            ));
        }
        if m.model_hash != model_hash {
            return Err(dump_err(
                &mpath,
                "model_hash",
                format!(
                    "{} is another model than the one given ({model_hash}); `lockstep info --model DIR` prints a model's hash",
                    m.model_hash
                ),
            ));
        }
        if m.tokens.is_empty() {
            return Err(dump_err(&mpath, "tokens", "empty"));
        }
        if m.tokens.len() > cfg.max_position_embeddings {
            return Err(dump_err(
                &mpath,
                "tokens",
                format!(
                    "{} tokens, past max_position_embeddings {}",
                    m.tokens.len(),
                    cfg.max_position_embeddings
                ),
            ));
        }
        if let Some((i, t)) = m
            .tokens
            .iter()
            .enumerate()
            .find(|(_, &t)| t as usize >= cfg.vocab_size)
        {
            return Err(dump_err(
                &mpath,
                "tokens",
                format!(
                    "token {i} is id {t}, past the vocabulary of {}",
                    cfg.vocab_size
                ),
            ));
        }
        if m.positions.is_empty()
            || m.positions.windows(2).any(|w| w[0] >= w[1])
            || m.positions.last().is_some_and(|&p| p >= m.tokens.len())
        {
            return Err(dump_err(
                &mpath,
                "positions",
                format!(
                    "must be ascending, without repeats, below the {} tokens",
                    m.tokens.len()
                ),
            ));
        }
        let tpath = dir.join(TENSORS);
        let file = SafeFile::open(&tpath)?;
        let mut entries = Vec::new();
        for name in file.names() {
            let (layer, op) = parse_name(name).ok_or_else(|| Error::Safetensors {
                path: tpath.clone(),
                problem: format!(
                    "tensor `{name}` is not a dump name (layers.L.OP or OP; docs/dump-format.md)"
                ),
            })?;
            if layer.is_some_and(|l| l >= cfg.num_hidden_layers) {
                return Err(Error::Safetensors {
                    path: tpath.clone(),
                    problem: format!(
                        "tensor `{name}`: the model has {} layers",
                        cfg.num_hidden_layers
                    ),
                });
            }
            let width = op_width(cfg, layer, op).ok_or_else(|| Error::Safetensors {
                path: tpath.clone(),
                problem: format!("tensor `{name}`: that layer of the model has no such tensor"),
            })?;
            let t = file.tensor(name).expect("listed");
            let want = vec![m.positions.len(), width];
            if t.shape != want {
                return Err(Error::WeightShape {
                    path: tpath.clone(),
                    tensor: name.clone(),
                    expected: want,
                    got: t.shape.clone(),
                });
            }
            entries.push((layer, op));
        }
        if entries.is_empty() {
            return Err(Error::Safetensors {
                path: tpath,
                problem: "holds no tensors".into(),
            });
        }
        Ok(Dump {
            dir: dir.to_path_buf(),
            manifest,
            file,
            entries,
        })
    }

    /// The tensor's values (rows of the manifest's positions), if present.
    pub fn get(&self, layer: Option<usize>, op: TraceOp) -> Option<Vec<f64>> {
        self.file
            .tensor(&op.tensor_name(layer))
            .map(|t| t.to_f64_vec())
    }

    pub fn has(&self, layer: Option<usize>, op: TraceOp) -> bool {
        self.entries.contains(&(layer, op))
    }

    pub fn tensors_path(&self) -> PathBuf {
        self.dir.join(TENSORS)
    }
}
