//! Synthetic Qwen3 checkpoints: the real shapes with seeded weights.
//!
//! Every value is a pure function of (seed, tensor name, flat index) computed
//! with integer arithmetic and single, correctly rounded f32 operations, so any
//! machine (and any backend, on its own device) materialises the same bf16
//! bits. docs/synthetic-weights.md gives the distribution and why it is shaped
//! like a trained checkpoint's (outlier channels, norm weights away from 1).

use super::config::{Architecture, MoeConfig, Qwen3Config};
use crate::error::{Error, Result};
use crate::util::bf16_bits;

/// Bump when the generator changes: it is part of every synthetic model's identity.
pub const GENERATOR_VERSION: u32 = 1;

pub const PRESETS: [&str; 5] = [
    "tiny",
    "tiny-moe",
    "qwen3-0.6b",
    "qwen3-8b",
    "qwen3-30b-a3b",
];

pub fn preset_config(name: &str) -> Result<Qwen3Config> {
    let base = |vocab, hidden, inter, layers, heads, kv, head_dim, tied| Qwen3Config {
        architecture: Architecture::Qwen3ForCausalLM,
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: inter,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: kv,
        head_dim,
        rms_norm_eps: 1e-6,
        rope_theta: 1_000_000.0,
        max_position_embeddings: 40960,
        tie_word_embeddings: tied,
        moe: None,
    };
    let moe = |mut c: Qwen3Config, experts, per_tok, inter| {
        c.architecture = Architecture::Qwen3MoeForCausalLM;
        c.moe = Some(MoeConfig {
            num_experts: experts,
            num_experts_per_tok: per_tok,
            moe_intermediate_size: inter,
            norm_topk_prob: true,
            decoder_sparse_step: 1,
            mlp_only_layers: vec![],
        });
        c
    };
    Ok(match name {
        "tiny" => base(512, 64, 160, 4, 4, 2, 32, true),
        "tiny-moe" => moe(base(512, 64, 128, 3, 4, 1, 32, false), 8, 2, 48),
        "qwen3-0.6b" => base(151936, 1024, 3072, 28, 16, 8, 128, true),
        "qwen3-8b" => base(151936, 4096, 12288, 36, 32, 8, 128, false),
        "qwen3-30b-a3b" => moe(base(151936, 2048, 6144, 48, 32, 4, 128, false), 128, 8, 768),
        other => return Err(Error::UnknownPreset(other.to_string())),
    })
}

/// How a tensor's values are drawn; decided by its name alone.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Role {
    /// Zero-mean bell-shaped values with standard deviation `std`; rows (or
    /// columns) in the outlier set scaled by `outlier_scale` (a power of two).
    Dense {
        std: f64,
        outlier_rows: bool,
        outlier_cols: bool,
        outlier_scale: f32,
    },
    /// Norm weights: `lo + span * u`, u uniform in [0, 1); outlier channels get
    /// `outlier_lo + outlier_span * u` instead; with probability 1/16 a channel
    /// is multiplied by `big` (a power of two).
    Norm {
        lo: f32,
        span: f32,
        outlier: Option<(f32, f32)>,
        big: f32,
    },
}

/// A seeded synthetic model.
#[derive(Debug, Clone)]
pub struct Synth {
    pub preset: String,
    pub seed: u64,
    pub config: Qwen3Config,
    /// Hidden channels that carry large activations, like the "massive
    /// activation" channels of trained LLMs. Sorted, distinct.
    pub outlier_channels: Vec<usize>,
}

impl Synth {
    pub fn new(preset: &str, seed: u64) -> Result<Self> {
        let config = preset_config(preset)?;
        let h = config.hidden_size;
        let count = (h / 256).clamp(2, 8);
        let key = tensor_key(seed, "lockstep.outlier_channels");
        let mut chosen = Vec::new();
        let mut i = 0u64;
        while chosen.len() < count {
            let c = (mix(key, i) % h as u64) as usize;
            if !chosen.contains(&c) {
                chosen.push(c);
            }
            i += 1;
        }
        chosen.sort_unstable();
        Ok(Synth {
            preset: preset.to_string(),
            seed,
            config,
            outlier_channels: chosen,
        })
    }

    pub fn spec(&self) -> String {
        format!("synth:{}:{}", self.preset, self.seed)
    }

    pub fn role(&self, name: &str) -> Role {
        let cfg = &self.config;
        let inv_sqrt = |n: usize| 1.0 / (n as f64).sqrt();
        let first_layer = name.starts_with("model.layers.0.");
        if name.ends_with("layernorm.weight") || name == "model.norm.weight" {
            return Role::Norm {
                lo: 0.5,
                span: 1.5,
                outlier: Some((0.0625, 0.0625)),
                big: 2.0,
            };
        }
        if name.ends_with("q_norm.weight") || name.ends_with("k_norm.weight") {
            // [0.4, 1.2): away from 1, no outlier channels. q and k feed the
            // absolute-RMS contract directly (its error scales with |q|), and
            // sharp attention amplifies bf16 error through depth: with
            // [0.25, 3) and 1 channel in 16 x4, bf16 logits of the qwen3-0.6b
            // shape sat 25% (relative RMS) from f64 truth, far past trained
            // checkpoints, and the transformers-faithful graph path's own k
            // was 5.8e-3 RMS from truth. docs/synthetic-weights.md has the numbers.
            return Role::Norm {
                lo: 0.4,
                span: 0.8,
                outlier: None,
                big: 1.0,
            };
        }
        let fan_in = |default: usize| -> usize {
            if name.ends_with("o_proj.weight") {
                cfg.q_dim()
            } else if name.ends_with("down_proj.weight") {
                match &cfg.moe {
                    Some(m) if name.contains(".experts.") => m.moe_intermediate_size,
                    _ => cfg.intermediate_size,
                }
            } else {
                default
            }
        };
        if name == "model.embed_tokens.weight" {
            return Role::Dense {
                std: inv_sqrt(cfg.hidden_size),
                outlier_rows: false,
                outlier_cols: true,
                outlier_scale: 8.0,
            };
        }
        if name == "lm_head.weight" {
            return Role::Dense {
                std: 2.0 * inv_sqrt(cfg.hidden_size),
                outlier_rows: false,
                outlier_cols: false,
                outlier_scale: 1.0,
            };
        }
        if name.ends_with("o_proj.weight") || name.ends_with("down_proj.weight") {
            // Residual-branch outputs: half gain keeps the stream from growing
            // fast with depth; layer 0's MLP writes the massive channels.
            return Role::Dense {
                std: 0.5 * inv_sqrt(fan_in(0)),
                outlier_rows: first_layer && name.ends_with("down_proj.weight"),
                outlier_cols: false,
                outlier_scale: 16.0,
            };
        }
        Role::Dense {
            std: inv_sqrt(fan_in(cfg.hidden_size)),
            outlier_rows: false,
            outlier_cols: false,
            outlier_scale: 1.0,
        }
    }

    /// The bf16 bits of tensor `name` with `shape`, as little-endian bytes.
    pub fn generate(&self, name: &str, shape: &[usize]) -> Vec<u8> {
        let n: usize = shape.iter().product();
        let cols = *shape.last().unwrap_or(&1);
        let key = tensor_key(self.seed, name);
        let role = self.role(name);
        let outliers = &self.outlier_channels;
        let mut out = vec![0u8; 2 * n];
        let fill = |start: usize, chunk: &mut [u8]| {
            for (j, b) in chunk.chunks_exact_mut(2).enumerate() {
                let i = start + j;
                let v = value(role, key, i, i / cols, i % cols, outliers);
                b.copy_from_slice(&bf16_bits(v).to_le_bytes());
            }
        };
        let threads = if n > (1 << 20) {
            std::thread::available_parallelism().map_or(1, |t| t.get())
        } else {
            1
        };
        let per = n.div_ceil(threads).max(1);
        std::thread::scope(|s| {
            for (t, chunk) in out.chunks_mut(2 * per).enumerate() {
                let fill = &fill;
                s.spawn(move || fill(t * per, chunk));
            }
        });
        out
    }
}

/// The per-tensor key: xxh3 of the name, seeded with the model seed.
pub fn tensor_key(seed: u64, name: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(name.as_bytes(), seed)
}

/// splitmix64 at position `i` of the stream keyed by `key`.
#[inline]
pub fn mix(key: u64, i: u64) -> u64 {
    let mut z = key.wrapping_add((i.wrapping_add(1)).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Standard deviation of the sum of four uniform 16-bit integers.
const IRWIN_HALL_STD: f64 = 37_837.226_5;

/// One value, before rounding to bf16.
#[inline]
fn value(role: Role, key: u64, i: usize, row: usize, col: usize, outliers: &[usize]) -> f32 {
    let h = mix(key, i as u64);
    match role {
        Role::Dense {
            std,
            outlier_rows,
            outlier_cols,
            outlier_scale,
        } => {
            let s = (h & 0xffff) + ((h >> 16) & 0xffff) + ((h >> 32) & 0xffff) + (h >> 48);
            let centred = s as i64 - 2 * 0xffff;
            // centred fits in 18 bits: exact in f32; one rounded multiply.
            let factor = (std / IRWIN_HALL_STD) as f32;
            let mut v = centred as f32 * factor;
            if (outlier_rows && outliers.binary_search(&row).is_ok())
                || (outlier_cols && outliers.binary_search(&col).is_ok())
            {
                v *= outlier_scale; // power of two: exact
            }
            v
        }
        Role::Norm {
            lo,
            span,
            outlier,
            big,
        } => {
            let u = (h >> 40) as f32 * (1.0 / 16_777_216.0); // 24 bits: exact
            let (lo, span) = match outlier {
                Some(o) if outliers.binary_search(&col).is_ok() => o,
                _ => (lo, span),
            };
            let mut v = lo + span * u; // two rounded ops, no fused multiply-add
            if (h & 0xf) == 0 {
                v *= big;
            }
            v
        }
    }
}
