//! Model folders and synthetic presets: config, weights, tokenizer, identity.
//!
//! A `Model` is a validated config plus a source of weights keyed by their
//! Hugging Face names. Weights come from safetensors (one file or sharded) or
//! from the synthetic generator; either way the engine sees the same API, and
//! the model hash is computed from the bytes the engine actually loads.

pub mod config;
pub mod layout;
pub mod safetensors;
pub mod synth;
pub mod tokenizer;

use crate::error::{Error, Result};
pub use config::{Architecture, MoeConfig, Qwen3Config};
use safetensors::{Dtype, HostTensor, SafeTensors, TensorSpec};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use synth::Synth;

enum Weights {
    Files(SafeTensors),
    /// The generator and every tensor's shape by name: a lookup per fetch,
    /// not a walk of the layout (18,867 names at 30B-A3B made a load
    /// quadratic: minutes of host time before the first decode).
    Synth(Synth, BTreeMap<String, Vec<usize>>),
}

pub struct Model {
    pub config: Qwen3Config,
    /// `synth:PRESET:SEED` or the folder path.
    pub origin: String,
    pub dir: Option<PathBuf>,
    weights: Weights,
    /// Tensors the checkpoint holds that the architecture does not use.
    pub unexpected_tensors: Vec<String>,
}

impl Model {
    /// Opens `synth:PRESET[:SEED]` (in memory) or a Hugging Face model folder.
    pub fn open(spec: &str) -> Result<Self> {
        if let Some(rest) = spec.strip_prefix("synth:") {
            let mut parts = rest.splitn(2, ':');
            let preset = parts.next().unwrap_or_default();
            let seed = match parts.next() {
                None => 0,
                Some(s) => s.parse().map_err(|_| Error::ModelSpec {
                    spec: spec.into(),
                    problem: format!("seed {s:?} is not an unsigned integer"),
                })?,
            };
            return Ok(Self::synthetic(Synth::new(preset, seed)?));
        }
        Self::open_dir(Path::new(spec))
    }

    /// What case ids call the model: a synthetic model's preset, else its
    /// origin (the folder path).
    pub fn name(&self) -> String {
        self.synth()
            .map_or(self.origin.clone(), |s| s.preset.clone())
    }

    pub fn synthetic(s: Synth) -> Self {
        let shapes = layout::expected_tensors(&s.config)
            .into_iter()
            .map(|t| (t.name, t.shape))
            .collect();
        Model {
            config: s.config.clone(),
            origin: s.spec(),
            dir: None,
            weights: Weights::Synth(s, shapes),
            unexpected_tensors: Vec::new(),
        }
    }

    /// Opens a folder and checks every expected tensor's presence, shape and dtype.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::ModelSpec {
                spec: dir.display().to_string(),
                problem: "not a folder (and not synth:PRESET[:SEED])".into(),
            });
        }
        let config = Qwen3Config::from_file(&dir.join("config.json"))?;
        let files = SafeTensors::open_dir(dir)?;
        let weight_file = || {
            let single = dir.join("model.safetensors");
            if single.exists() {
                single
            } else {
                dir.join("model.safetensors.index.json")
            }
        };
        // A config that names more tensors than the files hold is missing
        // one: name the first without listing them all (a 1 KB config can
        // name tens of millions).
        if layout::tensor_count(&config) > files.names().count() {
            let mut missing = None;
            layout::visit_expected(&config, &mut |name, _| {
                let present = files.get(&name).is_some();
                if !present {
                    missing = Some(name);
                }
                present
            });
            if let Some(tensor) = missing {
                return Err(Error::MissingTensor {
                    path: weight_file(),
                    tensor,
                });
            }
        }
        let expected = layout::expected_tensors(&config);
        for spec in &expected {
            let (t, path) = files.get(&spec.name).ok_or_else(|| Error::MissingTensor {
                path: weight_file(),
                tensor: spec.name.clone(),
            })?;
            if t.dtype == Dtype::F64 {
                return Err(Error::WeightDtype {
                    path: path.to_path_buf(),
                    tensor: spec.name.clone(),
                    expected: "BF16, F16 or F32".into(),
                    got: "F64".into(),
                });
            }
            if t.shape != spec.shape {
                return Err(Error::WeightShape {
                    path: path.to_path_buf(),
                    tensor: spec.name.clone(),
                    expected: spec.shape.clone(),
                    got: t.shape.clone(),
                });
            }
        }
        let known: std::collections::BTreeSet<&str> =
            expected.iter().map(|s| s.name.as_str()).collect();
        let unexpected: Vec<String> = files
            .names()
            .filter(|n| !known.contains(n.as_str()))
            .cloned()
            .collect();
        let m = Model {
            config,
            origin: dir.display().to_string(),
            dir: Some(dir.to_path_buf()),
            weights: Weights::Files(files),
            unexpected_tensors: unexpected,
        };
        // Mixed precision within one checkpoint is legal but unusual; all three
        // dtypes load, so nothing to refuse here.
        Ok(m)
    }

    pub fn synth(&self) -> Option<&Synth> {
        match &self.weights {
            Weights::Synth(s, _) => Some(s),
            Weights::Files(_) => None,
        }
    }

    pub fn expected_tensors(&self) -> Vec<TensorSpec> {
        layout::expected_tensors(&self.config)
    }

    /// A tensor by name, with its dtype and finiteness checked.
    pub fn tensor(&self, name: &str) -> Result<HostTensor<'_>> {
        let (t, path) = match &self.weights {
            Weights::Files(f) => {
                let (t, p) = f.get(name).ok_or_else(|| Error::MissingTensor {
                    path: self.dir.clone().unwrap_or_default(),
                    tensor: name.into(),
                })?;
                (t, p.to_path_buf())
            }
            Weights::Synth(s, shapes) => {
                let shape = shapes.get(name).ok_or_else(|| Error::MissingTensor {
                    path: PathBuf::from(self.origin.clone()),
                    tensor: name.into(),
                })?;
                let bytes = s.generate(name, shape);
                (
                    HostTensor {
                        dtype: Dtype::BF16,
                        shape: shape.clone(),
                        bytes: Cow::Owned(bytes),
                    },
                    PathBuf::from(self.origin.clone()),
                )
            }
        };
        if let Some((index, value)) = t.first_non_finite() {
            return Err(Error::NonFiniteWeight {
                path,
                tensor: name.into(),
                index,
                value,
            });
        }
        Ok(t)
    }

    pub fn tokenizer_path(&self) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|d| d.join("tokenizer.json"))
            .filter(|p| p.exists())
    }
}

/// Accumulates per-tensor digests in any order and combines them in name order,
/// so a backend may load tensors in whatever order suits it.
#[derive(Default)]
pub struct ModelHasher {
    digests: BTreeMap<String, u64>,
}

impl ModelHasher {
    pub fn add(&mut self, name: &str, t: &HostTensor) {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(t.dtype.name().as_bytes());
        for d in &t.shape {
            h.update(&(*d as u64).to_le_bytes());
        }
        h.update(&t.bytes);
        self.digests.insert(name.to_string(), h.digest());
    }

    /// 128-bit hex digest over the canonical config and all tensor digests.
    pub fn finish(&self, config: &Qwen3Config) -> String {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(config.canonical_json().as_bytes());
        for (name, d) in &self.digests {
            h.update(name.as_bytes());
            h.update(&d.to_le_bytes());
        }
        format!("xxh3:{:032x}", h.digest128())
    }
}

/// Writes a synthetic model as a Hugging Face folder: config.json,
/// generation_config.json, model.safetensors (or shards of at most
/// `shard_bytes` with an index) and, for presets whose vocabulary has room,
/// a byte-level tokenizer.json.
pub fn write_synth_folder(s: &Synth, out: &Path, shard_bytes: Option<usize>) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let cfg_path = out.join("config.json");
    crate::util::write_json_atomically(&cfg_path, &s.config.to_hf_json())?;
    crate::util::write_json_atomically(
        &out.join("generation_config.json"),
        &serde_json::json!({"bos_token_id": 0, "eos_token_id": 1, "do_sample": false}),
    )?;
    let specs = layout::expected_tensors(&s.config);
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    meta.insert("lockstep.synth".to_string(), s.spec());
    meta.insert(
        "lockstep.generator".to_string(),
        synth::GENERATOR_VERSION.to_string(),
    );
    let mut shards: Vec<Vec<TensorSpec>> = vec![Vec::new()];
    let mut size = 0usize;
    for t in specs {
        let bytes = t.shape.iter().product::<usize>() * 2;
        if let Some(limit) = shard_bytes {
            if size > 0 && size + bytes > limit {
                shards.push(Vec::new());
                size = 0;
            }
        }
        size += bytes;
        shards.last_mut().expect("one shard").push(t);
    }
    let gen = |t: &TensorSpec| Ok(s.generate(&t.name, &t.shape));
    // Clear leftovers of an earlier write of the other layout.
    for old in std::fs::read_dir(out)
        .map_err(|e| Error::io(out, e))?
        .flatten()
    {
        let n = old.file_name().to_string_lossy().into_owned();
        if n.starts_with("model") && (n.ends_with(".safetensors") || n.ends_with(".index.json")) {
            let _ = std::fs::remove_file(old.path());
        }
    }
    if shards.len() == 1 && shard_bytes.is_none() {
        safetensors::write_file(&out.join("model.safetensors"), &shards[0], &meta, gen)?;
    } else {
        let n = shards.len();
        let mut weight_map = serde_json::Map::new();
        let mut total = 0usize;
        for (i, shard) in shards.iter().enumerate() {
            let file = format!("model-{:05}-of-{:05}.safetensors", i + 1, n);
            safetensors::write_file(&out.join(&file), shard, &meta, gen)?;
            for t in shard {
                total += t.shape.iter().product::<usize>() * 2;
                weight_map.insert(t.name.clone(), serde_json::Value::from(file.clone()));
            }
        }
        crate::util::write_json_atomically(
            &out.join("model.safetensors.index.json"),
            &serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map}),
        )?;
    }
    if s.config.vocab_size >= 256 {
        crate::util::write_json_atomically(
            &out.join("tokenizer.json"),
            &tokenizer::byte_level_tokenizer_json(),
        )?;
    }
    Ok(())
}
