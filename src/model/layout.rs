//! The tensors a Qwen3 / Qwen3-MoE checkpoint holds, by Hugging Face key.
//! One list serves loading (missing / wrong-shape checks), synthesis and hashing.

use super::config::Qwen3Config;
use super::safetensors::{Dtype, TensorSpec};

/// Expected tensors in sorted name order (the order they are hashed and written).
pub fn expected_tensors(cfg: &Qwen3Config) -> Vec<TensorSpec> {
    let h = cfg.hidden_size;
    let mut v: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![cfg.vocab_size, h]),
        ("model.norm.weight".into(), vec![h]),
    ];
    if !cfg.tie_word_embeddings {
        v.push(("lm_head.weight".into(), vec![cfg.vocab_size, h]));
    }
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        v.push((format!("{p}.input_layernorm.weight"), vec![h]));
        v.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        v.push((format!("{p}.self_attn.q_proj.weight"), vec![cfg.q_dim(), h]));
        v.push((
            format!("{p}.self_attn.k_proj.weight"),
            vec![cfg.kv_dim(), h],
        ));
        v.push((
            format!("{p}.self_attn.v_proj.weight"),
            vec![cfg.kv_dim(), h],
        ));
        v.push((format!("{p}.self_attn.o_proj.weight"), vec![h, cfg.q_dim()]));
        v.push((format!("{p}.self_attn.q_norm.weight"), vec![cfg.head_dim]));
        v.push((format!("{p}.self_attn.k_norm.weight"), vec![cfg.head_dim]));
        match (&cfg.moe, cfg.layer_is_moe(l)) {
            (Some(m), true) => {
                v.push((format!("{p}.mlp.gate.weight"), vec![m.num_experts, h]));
                let i = m.moe_intermediate_size;
                for e in 0..m.num_experts {
                    v.push((format!("{p}.mlp.experts.{e}.gate_proj.weight"), vec![i, h]));
                    v.push((format!("{p}.mlp.experts.{e}.up_proj.weight"), vec![i, h]));
                    v.push((format!("{p}.mlp.experts.{e}.down_proj.weight"), vec![h, i]));
                }
            }
            _ => {
                let i = cfg.intermediate_size;
                v.push((format!("{p}.mlp.gate_proj.weight"), vec![i, h]));
                v.push((format!("{p}.mlp.up_proj.weight"), vec![i, h]));
                v.push((format!("{p}.mlp.down_proj.weight"), vec![h, i]));
            }
        }
    }
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v.into_iter()
        .map(|(name, shape)| TensorSpec {
            name,
            dtype: Dtype::BF16,
            shape,
        })
        .collect()
}

/// Parameter count and bytes at bf16.
pub fn parameter_count(cfg: &Qwen3Config) -> usize {
    expected_tensors(cfg)
        .iter()
        .map(|t| t.shape.iter().product::<usize>())
        .sum()
}
