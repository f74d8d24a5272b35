//! The tensors a Qwen3 / Qwen3-MoE checkpoint holds, by Hugging Face key.
//! One list serves loading (missing / wrong-shape checks), synthesis and hashing.

use super::config::Qwen3Config;
use super::safetensors::{Dtype, TensorSpec};

/// Calls `f` with each expected tensor's name and shape, in layer order,
/// until it returns false: lets a check stop at the first missing tensor of
/// a config that would name millions without building the list.
pub fn visit_expected(cfg: &Qwen3Config, f: &mut dyn FnMut(String, Vec<usize>) -> bool) {
    let h = cfg.hidden_size;
    let mut top = vec![
        (
            "model.embed_tokens.weight".to_string(),
            vec![cfg.vocab_size, h],
        ),
        ("model.norm.weight".to_string(), vec![h]),
    ];
    if !cfg.tie_word_embeddings {
        top.push(("lm_head.weight".into(), vec![cfg.vocab_size, h]));
    }
    for (n, s) in top {
        if !f(n, s) {
            return;
        }
    }
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        let mut layer = vec![
            (format!("{p}.input_layernorm.weight"), vec![h]),
            (format!("{p}.post_attention_layernorm.weight"), vec![h]),
            (format!("{p}.self_attn.q_proj.weight"), vec![cfg.q_dim(), h]),
            (
                format!("{p}.self_attn.k_proj.weight"),
                vec![cfg.kv_dim(), h],
            ),
            (
                format!("{p}.self_attn.v_proj.weight"),
                vec![cfg.kv_dim(), h],
            ),
            (format!("{p}.self_attn.o_proj.weight"), vec![h, cfg.q_dim()]),
            (format!("{p}.self_attn.q_norm.weight"), vec![cfg.head_dim]),
            (format!("{p}.self_attn.k_norm.weight"), vec![cfg.head_dim]),
        ];
        match (&cfg.moe, cfg.layer_is_moe(l)) {
            (Some(m), true) => {
                layer.push((format!("{p}.mlp.gate.weight"), vec![m.num_experts, h]));
                for (n, s) in layer.drain(..) {
                    if !f(n, s) {
                        return;
                    }
                }
                let i = m.moe_intermediate_size;
                for e in 0..m.num_experts {
                    for (n, s) in [
                        (format!("{p}.mlp.experts.{e}.gate_proj.weight"), vec![i, h]),
                        (format!("{p}.mlp.experts.{e}.up_proj.weight"), vec![i, h]),
                        (format!("{p}.mlp.experts.{e}.down_proj.weight"), vec![h, i]),
                    ] {
                        if !f(n, s) {
                            return;
                        }
                    }
                }
            }
            _ => {
                let i = cfg.intermediate_size;
                layer.push((format!("{p}.mlp.gate_proj.weight"), vec![i, h]));
                layer.push((format!("{p}.mlp.up_proj.weight"), vec![i, h]));
                layer.push((format!("{p}.mlp.down_proj.weight"), vec![h, i]));
            }
        }
        for (n, s) in layer {
            if !f(n, s) {
                return;
            }
        }
    }
}

/// Expected tensors in sorted name order (the order they are hashed and written).
pub fn expected_tensors(cfg: &Qwen3Config) -> Vec<TensorSpec> {
    let mut v = Vec::with_capacity(tensor_count(cfg).min(1 << 20));
    visit_expected(cfg, &mut |name, shape| {
        v.push(TensorSpec {
            name,
            dtype: Dtype::BF16,
            shape,
        });
        true
    });
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// How many tensors `expected_tensors` lists, by arithmetic alone
/// (saturating: a hostile config cannot overflow it).
pub fn tensor_count(cfg: &Qwen3Config) -> usize {
    let top = if cfg.tie_word_embeddings { 2 } else { 3 };
    let moe_layers = (0..cfg.num_hidden_layers)
        .filter(|&l| cfg.layer_is_moe(l))
        .count();
    let dense_layers = cfg.num_hidden_layers - moe_layers;
    let experts = cfg.moe.as_ref().map_or(0, |m| m.num_experts);
    let per_moe = 9usize.saturating_add(experts.saturating_mul(3));
    top + dense_layers.saturating_mul(11) + moe_layers.saturating_mul(per_moe)
}

/// Parameter count (bf16 bytes are twice it), by arithmetic alone
/// (saturating).
pub fn parameter_count(cfg: &Qwen3Config) -> usize {
    let (h, q, kv) = (cfg.hidden_size, cfg.q_dim(), cfg.kv_dim());
    let m = |a: usize, b: usize| a.saturating_mul(b);
    let heads = if cfg.tie_word_embeddings { 1 } else { 2 };
    let mut n = m(m(heads, cfg.vocab_size), h).saturating_add(h);
    for l in 0..cfg.num_hidden_layers {
        let attn = m(2, h) + m(q, h) + m(m(2, kv), h) + m(h, q) + m(2, cfg.head_dim);
        let mlp = match (&cfg.moe, cfg.layer_is_moe(l)) {
            (Some(moe), true) => m(moe.num_experts, h)
                .saturating_add(m(moe.num_experts, m(3, m(moe.moe_intermediate_size, h)))),
            _ => m(3, m(cfg.intermediate_size, h)),
        };
        n = n.saturating_add(attn).saturating_add(mlp);
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::synth::{preset_config, PRESETS};

    /// The arithmetic counts are the list's, on every preset.
    #[test]
    fn counts_by_arithmetic_match_the_list() {
        for p in PRESETS {
            let cfg = preset_config(p).unwrap();
            let list = expected_tensors(&cfg);
            assert_eq!(tensor_count(&cfg), list.len(), "{p}");
            let params: usize = list.iter().map(|t| t.shape.iter().product::<usize>()).sum();
            assert_eq!(parameter_count(&cfg), params, "{p}");
        }
    }
}
