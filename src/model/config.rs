//! `config.json` of a Hugging Face Qwen3 / Qwen3-MoE folder.
//!
//! Parsed field by field (rather than with a derive) so that a missing or
//! mistyped field is reported by name together with the file it came from.
//! Unknown fields are ignored, as `transformers` does. The parsed config
//! serialises back to a canonical JSON that feeds the model hash.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Architecture {
    Qwen3ForCausalLM,
    Qwen3MoeForCausalLM,
}

/// Mixture-of-experts settings (Qwen3-MoE only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MoeConfig {
    pub num_experts: usize,
    pub num_experts_per_tok: usize,
    pub moe_intermediate_size: usize,
    pub norm_topk_prob: bool,
    pub decoder_sparse_step: usize,
    pub mlp_only_layers: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Qwen3Config {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    /// Dense MLP width; for MoE models it is used by `mlp_only_layers`.
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub moe: Option<MoeConfig>,
}

struct Fields<'a> {
    path: &'a Path,
    map: &'a Map<String, Value>,
}

impl Fields<'_> {
    fn err(&self, field: &str, problem: impl Into<String>) -> Error {
        Error::ConfigField {
            path: self.path.to_path_buf(),
            field: field.to_string(),
            problem: problem.into(),
        }
    }

    fn get(&self, field: &str) -> Option<&Value> {
        self.map.get(field).filter(|v| !v.is_null())
    }

    fn usize(&self, field: &str) -> Result<usize> {
        let v = self
            .get(field)
            .ok_or_else(|| self.err(field, "required field is missing"))?;
        v.as_u64()
            .map(|x| x as usize)
            .ok_or_else(|| self.err(field, format!("expected a non-negative integer, got {v}")))
    }

    fn usize_or(&self, field: &str, default: usize) -> Result<usize> {
        match self.get(field) {
            None => Ok(default),
            Some(_) => self.usize(field),
        }
    }

    fn f64_in(&self, map: &Map<String, Value>, field: &str) -> Option<Result<f64>> {
        map.get(field).filter(|v| !v.is_null()).map(|v| {
            v.as_f64()
                .ok_or_else(|| self.err(field, format!("expected a number, got {v}")))
        })
    }

    fn f64(&self, field: &str) -> Result<f64> {
        self.f64_in(self.map, field)
            .unwrap_or_else(|| Err(self.err(field, "required field is missing")))
    }

    fn bool_or(&self, field: &str, default: bool) -> Result<bool> {
        match self.get(field) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.err(field, format!("expected true or false, got {v}"))),
        }
    }

    fn str(&self, field: &str) -> Result<Option<&str>> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.err(field, format!("expected a string, got {v}"))),
        }
    }
}

impl Qwen3Config {
    /// Reads and validates `<dir>/config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = crate::util::read_text_bounded(path, crate::util::limits::CONFIG)?;
        Self::from_json_str(&text, path)
    }

    /// Parses config text; `path` only names the source in errors.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let value: Value = serde_json::from_str(text).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
        let map = value.as_object().ok_or_else(|| Error::ConfigField {
            path: path.to_path_buf(),
            field: "<root>".into(),
            problem: "expected a JSON object".into(),
        })?;
        Self::from_map(map, path)
    }

    fn from_map(map: &Map<String, Value>, path: &Path) -> Result<Self> {
        let f = Fields { path, map };
        let architecture = parse_architecture(&f)?;

        if let Some(act) = f.str("hidden_act")? {
            if act != "silu" {
                return Err(f.err(
                    "hidden_act",
                    format!("only \"silu\" is supported, got {act:?}"),
                ));
            }
        }
        if f.bool_or("attention_bias", false)? {
            return Err(f.err(
                "attention_bias",
                "Qwen3 has no attention bias; true is not supported",
            ));
        }
        let rope_theta = parse_rope_theta(&f)?;
        refuse_windowed_attention(&f)?;

        let moe = match architecture {
            Architecture::Qwen3ForCausalLM => None,
            Architecture::Qwen3MoeForCausalLM => Some(MoeConfig {
                num_experts: parse_num_experts(&f)?,
                num_experts_per_tok: f.usize("num_experts_per_tok")?,
                moe_intermediate_size: f.usize("moe_intermediate_size")?,
                // transformers' Qwen3MoeConfig defaults this to false.
                norm_topk_prob: f.bool_or("norm_topk_prob", false)?,
                decoder_sparse_step: f.usize_or("decoder_sparse_step", 1)?,
                mlp_only_layers: match f.get("mlp_only_layers") {
                    None => Vec::new(),
                    Some(Value::Array(items)) => items
                        .iter()
                        .map(|x| {
                            x.as_u64().map(|x| x as usize).ok_or_else(|| {
                                f.err(
                                    "mlp_only_layers",
                                    format!("expected layer indices, got {x}"),
                                )
                            })
                        })
                        .collect::<Result<_>>()?,
                    Some(v) => {
                        return Err(f.err("mlp_only_layers", format!("expected a list, got {v}")))
                    }
                },
            }),
        };

        let cfg = Qwen3Config {
            architecture,
            vocab_size: f.usize("vocab_size")?,
            hidden_size: f.usize("hidden_size")?,
            intermediate_size: match architecture {
                Architecture::Qwen3ForCausalLM => f.usize("intermediate_size")?,
                Architecture::Qwen3MoeForCausalLM => f.usize_or("intermediate_size", 0)?,
            },
            num_hidden_layers: f.usize("num_hidden_layers")?,
            num_attention_heads: f.usize("num_attention_heads")?,
            num_key_value_heads: f.usize("num_key_value_heads")?,
            head_dim: parse_head_dim(&f)?,
            rms_norm_eps: f.f64("rms_norm_eps")?,
            rope_theta,
            max_position_embeddings: f.usize("max_position_embeddings")?,
            // transformers' PretrainedConfig default.
            tie_word_embeddings: f.bool_or("tie_word_embeddings", true)?,
            moe,
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |field: &str, problem: String| Error::ConfigField {
            path: path.to_path_buf(),
            field: field.into(),
            problem,
        };
        // Upper bounds far past any real model keep a hostile config from
        // driving allocation or iteration sizes.
        for (name, v, max) in [
            ("vocab_size", self.vocab_size, 1 << 24),
            ("hidden_size", self.hidden_size, 1 << 20),
            ("intermediate_size", self.intermediate_size.max(1), 1 << 22),
            ("num_hidden_layers", self.num_hidden_layers, 4096),
            ("num_attention_heads", self.num_attention_heads, 4096),
            ("num_key_value_heads", self.num_key_value_heads, 4096),
            ("head_dim", self.head_dim, 4096),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                1 << 24,
            ),
        ] {
            if v == 0 {
                return Err(bad(name, "must be positive".into()));
            }
            if v > max {
                return Err(bad(
                    name,
                    format!("{v} is larger than lockstep supports ({max})"),
                ));
            }
        }
        if let Some(m) = &self.moe {
            for (name, v, max) in [
                ("num_experts", m.num_experts, 4096),
                ("moe_intermediate_size", m.moe_intermediate_size, 1 << 22),
            ] {
                if v == 0 {
                    return Err(bad(
                        name,
                        "must be positive (an expert of width 0 computes nothing)".into(),
                    ));
                }
                if v > max {
                    return Err(bad(
                        name,
                        format!("{v} is larger than lockstep supports ({max})"),
                    ));
                }
            }
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return Err(bad(
                "num_key_value_heads",
                format!(
                    "{} query heads are not a multiple of {} key/value heads",
                    self.num_attention_heads, self.num_key_value_heads
                ),
            ));
        }
        if self.head_dim % 2 != 0 {
            return Err(bad(
                "head_dim",
                format!("RoPE needs an even head_dim, got {}", self.head_dim),
            ));
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps.is_finite()) {
            return Err(bad(
                "rms_norm_eps",
                format!("must be positive, got {}", self.rms_norm_eps),
            ));
        }
        if !(self.rope_theta > 1.0 && self.rope_theta.is_finite()) {
            return Err(bad(
                "rope_theta",
                format!("must be > 1, got {}", self.rope_theta),
            ));
        }
        if let Some(m) = &self.moe {
            if m.num_experts == 0
                || m.num_experts_per_tok == 0
                || m.num_experts_per_tok > m.num_experts
            {
                return Err(bad(
                    "num_experts_per_tok",
                    format!(
                        "{} of {} experts per token",
                        m.num_experts_per_tok, m.num_experts
                    ),
                ));
            }
            if m.decoder_sparse_step == 0 {
                return Err(bad("decoder_sparse_step", "must be positive".into()));
            }
            if self.num_hidden_layers > 0
                && (0..self.num_hidden_layers).any(|l| !self.layer_is_moe(l))
                && self.intermediate_size == 0
            {
                return Err(bad(
                    "intermediate_size",
                    "dense layers exist but intermediate_size is missing".into(),
                ));
            }
        }
        Ok(())
    }

    /// Whether decoder layer `layer` uses the sparse MoE block (transformers' rule).
    pub fn layer_is_moe(&self, layer: usize) -> bool {
        match &self.moe {
            None => false,
            Some(m) => {
                !m.mlp_only_layers.contains(&layer)
                    && m.num_experts > 0
                    && (layer + 1) % m.decoder_sparse_step == 0
            }
        }
    }

    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }

    /// Canonical JSON (fixed field order) used in the model hash.
    pub fn canonical_json(&self) -> String {
        serde_json::to_string(self).expect("config serialises")
    }

    /// The Hugging Face `config.json` that `transformers` loads for this config.
    pub fn to_hf_json(&self) -> Value {
        let mut m = Map::new();
        let (arch, model_type) = match self.architecture {
            Architecture::Qwen3ForCausalLM => ("Qwen3ForCausalLM", "qwen3"),
            Architecture::Qwen3MoeForCausalLM => ("Qwen3MoeForCausalLM", "qwen3_moe"),
        };
        let mut put = |k: &str, v: Value| {
            m.insert(k.to_string(), v);
        };
        put("architectures", Value::from(vec![arch]));
        put("model_type", Value::from(model_type));
        put("attention_bias", Value::from(false));
        put("attention_dropout", Value::from(0.0));
        put("bos_token_id", Value::from(0));
        put("eos_token_id", Value::from(1));
        put("head_dim", Value::from(self.head_dim));
        put("hidden_act", Value::from("silu"));
        put("hidden_size", Value::from(self.hidden_size));
        put("initializer_range", Value::from(0.02));
        put("intermediate_size", Value::from(self.intermediate_size));
        put(
            "max_position_embeddings",
            Value::from(self.max_position_embeddings),
        );
        put("max_window_layers", Value::from(self.num_hidden_layers));
        put("num_attention_heads", Value::from(self.num_attention_heads));
        put("num_hidden_layers", Value::from(self.num_hidden_layers));
        put("num_key_value_heads", Value::from(self.num_key_value_heads));
        put("rms_norm_eps", Value::from(self.rms_norm_eps));
        put("rope_scaling", Value::Null);
        put("rope_theta", Value::from(self.rope_theta));
        put("sliding_window", Value::Null);
        put("tie_word_embeddings", Value::from(self.tie_word_embeddings));
        put("torch_dtype", Value::from("bfloat16"));
        put("use_cache", Value::from(true));
        put("use_sliding_window", Value::from(false));
        put("vocab_size", Value::from(self.vocab_size));
        if let Some(moe) = &self.moe {
            put("num_experts", Value::from(moe.num_experts));
            put("num_experts_per_tok", Value::from(moe.num_experts_per_tok));
            put(
                "moe_intermediate_size",
                Value::from(moe.moe_intermediate_size),
            );
            put("norm_topk_prob", Value::from(moe.norm_topk_prob));
            put("decoder_sparse_step", Value::from(moe.decoder_sparse_step));
            put("mlp_only_layers", Value::from(moe.mlp_only_layers.clone()));
            put("output_router_logits", Value::from(false));
            put("router_aux_loss_coef", Value::from(0.001));
        }
        Value::Object(m)
    }
}

fn parse_architecture(f: &Fields) -> Result<Architecture> {
    let names: Vec<String> = match f.get("architectures") {
        Some(Value::Array(items)) => items
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| x.to_string())
            })
            .collect(),
        Some(v) => {
            return Err(f.err(
                "architectures",
                format!("expected a list of names, got {v}"),
            ))
        }
        None => match f.str("model_type")? {
            Some("qwen3") => vec!["Qwen3ForCausalLM".into()],
            Some("qwen3_moe") => vec!["Qwen3MoeForCausalLM".into()],
            Some(other) => vec![format!("model_type={other}")],
            None => {
                return Err(f.err(
                    "architectures",
                    "required field is missing (and no model_type)",
                ))
            }
        },
    };
    match names
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["Qwen3ForCausalLM"] => Ok(Architecture::Qwen3ForCausalLM),
        ["Qwen3MoeForCausalLM"] => Ok(Architecture::Qwen3MoeForCausalLM),
        _ => Err(Error::UnsupportedArchitecture {
            path: PathBuf::from(f.path),
            found: names,
        }),
    }
}

/// `num_experts` (hub configs) or `num_local_experts` (transformers 5's
/// `save_pretrained`); both present must agree.
fn parse_num_experts(f: &Fields) -> Result<usize> {
    match (f.get("num_experts"), f.get("num_local_experts")) {
        (Some(_), None) => f.usize("num_experts"),
        (None, Some(_)) => f.usize("num_local_experts"),
        (Some(_), Some(_)) => {
            let (a, b) = (f.usize("num_experts")?, f.usize("num_local_experts")?);
            if a != b {
                return Err(f.err(
                    "num_experts",
                    format!("{a}, but num_local_experts says {b}"),
                ));
            }
            Ok(a)
        }
        (None, None) => Err(f.err(
            "num_experts",
            "required field is missing (nor is num_local_experts given)",
        )),
    }
}

/// `head_dim`, or, absent, `hidden_size / num_attention_heads` as
/// transformers derives it (refused where that does not divide).
fn parse_head_dim(f: &Fields) -> Result<usize> {
    if f.get("head_dim").is_some() {
        return f.usize("head_dim");
    }
    let (h, n) = (f.usize("hidden_size")?, f.usize("num_attention_heads")?);
    if n == 0 || h % n != 0 {
        return Err(f.err(
            "head_dim",
            format!(
                "absent, and hidden_size {h} is not a multiple of num_attention_heads {n} to derive it from"
            ),
        ));
    }
    Ok(h / n)
}

/// lockstep implements full causal attention on every layer. A config that
/// asks for a sliding window (`use_sliding_window: true`) or any other
/// layer type (`layer_types`) is refused rather than run as full attention;
/// `sliding_window` alone is ignored, as transformers ignores it unless
/// `use_sliding_window` is true.
fn refuse_windowed_attention(f: &Fields) -> Result<()> {
    if f.bool_or("use_sliding_window", false)? {
        return Err(f.err(
            "use_sliding_window",
            "sliding-window attention is not implemented (only full attention on every layer)",
        ));
    }
    match f.get("layer_types") {
        None => Ok(()),
        Some(Value::Array(items)) => {
            let layers = f.usize("num_hidden_layers")?;
            if items.len() != layers {
                return Err(f.err(
                    "layer_types",
                    format!("{} entries for {layers} layers", items.len()),
                ));
            }
            match items
                .iter()
                .position(|t| t.as_str() != Some("full_attention"))
            {
                None => Ok(()),
                Some(i) => Err(f.err(
                    &format!("layer_types[{i}]"),
                    format!("{} is not implemented (only \"full_attention\")", items[i]),
                )),
            }
        }
        Some(v) => Err(f.err("layer_types", format!("expected a list, got {v}"))),
    }
}

/// `rope_theta` at top level (hub configs) or inside `rope_parameters`
/// (transformers 5). Only the default (unscaled) RoPE is implemented, so any
/// scaling type is refused rather than silently ignored.
fn parse_rope_theta(f: &Fields) -> Result<f64> {
    let mut theta = f.f64_in(f.map, "rope_theta").transpose()?;
    for key in ["rope_scaling", "rope_parameters"] {
        match f.get(key) {
            None => {}
            Some(Value::Object(p)) => {
                let kind = p
                    .get("rope_type")
                    .or_else(|| p.get("type"))
                    .and_then(Value::as_str)
                    .unwrap_or("default");
                if kind != "default" {
                    return Err(f.err(
                        key,
                        format!("RoPE type {kind:?} is not supported (only \"default\")"),
                    ));
                }
                if let Some(t) = f.f64_in(p, "rope_theta").transpose()? {
                    theta = Some(t);
                }
            }
            Some(v) => return Err(f.err(key, format!("expected an object, got {v}"))),
        }
    }
    theta.ok_or_else(|| f.err("rope_theta", "required field is missing"))
}

impl Qwen3Config {
    pub fn architecture_name(&self) -> &'static str {
        match self.architecture {
            Architecture::Qwen3ForCausalLM => "Qwen3ForCausalLM",
            Architecture::Qwen3MoeForCausalLM => "Qwen3MoeForCausalLM",
        }
    }
}
