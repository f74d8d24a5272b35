#!/usr/bin/env python3
"""Small Qwen3 checkpoints written by transformers' own `save_pretrained`, in
shapes no lockstep preset uses, for the external-checkpoint tests
(tests/external_checkpoints.rs; docs/oracle.md says how they are made).

Each is built from a transformers config, initialised by transformers with a
fixed torch seed, given norm weights away from 1 (a trained model's are), and
saved as safetensors in float32. Then, per checkpoint, ci/oracle.py runs
transformers on it in float64 and float32 and the reference files go beside
it. Runs wherever torch and transformers are installed, CPU or GPU.

    python3 ci/hf_checkpoints.py --out tests/checkpoints --lockstep target/release/lockstep
"""
import argparse
import json
import os
import subprocess
import sys

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM

# name -> (config class, model class, config fields). Shapes chosen for what
# the presets never exercise: head_dim 48, 80 and 256, GQA ratios 2, 4 and
# 1, odd vocabularies, tied and untied heads, an MoE model whose top-k
# weights are not renormalised, with a dense layer (mlp_only_layers) and
# MoE on every second layer only (decoder_sparse_step 2).
CHECKPOINTS = {
    "dense-hd48-gqa2-untied": (
        Qwen3Config,
        Qwen3ForCausalLM,
        dict(vocab_size=999, hidden_size=96, intermediate_size=160, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, head_dim=48, tie_word_embeddings=False,
             rope_theta=10000.0, rms_norm_eps=1e-6, max_position_embeddings=4096),
    ),
    "dense-hd80-gqa4-tied": (
        Qwen3Config,
        Qwen3ForCausalLM,
        dict(vocab_size=1001, hidden_size=160, intermediate_size=256, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=1, head_dim=80, tie_word_embeddings=True,
             rope_theta=1000000.0, rms_norm_eps=1e-6, max_position_embeddings=4096),
    ),
    "dense-hd256-mha": (
        Qwen3Config,
        Qwen3ForCausalLM,
        dict(vocab_size=777, hidden_size=128, intermediate_size=192, num_hidden_layers=1,
             num_attention_heads=2, num_key_value_heads=2, head_dim=256, tie_word_embeddings=False,
             rope_theta=10000.0, rms_norm_eps=1e-5, max_position_embeddings=2048),
    ),
    "moe-no-renorm-sparse2": (
        Qwen3MoeConfig,
        Qwen3MoeForCausalLM,
        dict(vocab_size=515, hidden_size=64, intermediate_size=128, moe_intermediate_size=48,
             num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
             num_experts=8, num_experts_per_tok=2, norm_topk_prob=False, decoder_sparse_step=2,
             mlp_only_layers=[3], tie_word_embeddings=False, rope_theta=10000.0,
             rms_norm_eps=1e-6, max_position_embeddings=4096, router_aux_loss_coef=0.0),
    ),
}

PROMPT = "1,17,42,99,3,250,7,8"


def build(name, config_cls, model_cls, fields, out, seed):
    torch.manual_seed(seed)
    cfg = config_cls(initializer_range=0.1, **fields)
    cfg.torch_dtype = torch.float32
    model = model_cls(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
    path = os.path.join(out, name)
    model.save_pretrained(path, safe_serialization=True)
    return path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--lockstep", required=True, help="a lockstep binary, for the model hash")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", help="names to write (default: all)")
    a = ap.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    for name, (c, m, fields) in CHECKPOINTS.items():
        if a.only and name not in a.only:
            continue
        path = build(name, c, m, fields, a.out, a.seed)
        info = subprocess.run([a.lockstep, "info", "--model", path, "--json"],
                              check=True, capture_output=True, text=True)
        model_hash = json.loads(info.stdout)["model_hash"]
        print(name, model_hash, flush=True)
        for dtype in ["float64", "float32"]:
            subprocess.run([sys.executable, os.path.join(here, "oracle.py"), "--model", path,
                            "--preset", name, "--seed", str(a.seed), "--model-hash", model_hash,
                            "--dtype", dtype, "--prompt", PROMPT, "--steps", "16",
                            "--out", os.path.join(path, f"reference-{dtype}.json")], check=True)


if __name__ == "__main__":
    main()
