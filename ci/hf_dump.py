#!/usr/bin/env python3
"""Writes a lockstep dump (docs/dump-format.md) of Hugging Face transformers'
Qwen3 or Qwen3-MoE on one teacher-forced pass, through forward hooks: the
worked example of bringing another engine to `lockstep compare --theirs`.

    python3 ci/hf_dump.py --model DIR --model-hash "$(lockstep info --model DIR --json | jq -r .model_hash)" \
        --tokens 1,2,3,4 --dtype bfloat16 --out DUMP
    lockstep compare --theirs DUMP --model DIR

Hooks: module outputs (embed_tokens, input_layernorm, q_proj, k_proj,
v_proj, q_norm, k_norm, o_proj, post_attention_layernorm, mlp, the decoder
layer, norm, lm_head), o_proj's input (the attention output),
post_attention_layernorm's input (the residual after attention), the MoE
router's outputs, and a wrapper on the module's `apply_rotary_pos_emb` for q
and k after RoPE. Attention is transformers' eager implementation, MoE
experts its eager loop. Runs on CPU or GPU, wherever torch and transformers
are installed.
"""
import argparse
import json
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--model-hash", required=True, help="lockstep's hash of the model (lockstep info)")
    ap.add_argument("--tokens", required=True, help="comma-separated token ids")
    ap.add_argument("--dtype", choices=["float64", "float32", "bfloat16"], required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--layers", help="comma-separated layers to keep (default all)")
    a = ap.parse_args()

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    with open(os.path.join(a.model, "config.json")) as f:
        moe = any("Moe" in x for x in json.load(f).get("architectures", []))
    extra = {"experts_implementation": "eager"} if moe else {}
    model = AutoModelForCausalLM.from_pretrained(
        a.model, dtype=getattr(torch, a.dtype), attn_implementation="eager", **extra
    ).to(a.device).eval()
    tokens = [int(x) for x in a.tokens.split(",")]
    n = len(tokens)
    out = {}

    keep = None if a.layers is None else {int(x) for x in a.layers.split(",")}

    def put(name, t):
        if keep is not None and name.startswith("layers.") and int(name.split(".")[1]) not in keep:
            return
        # [1, n, ...] or [n, ...] -> [n, width]; bf16 and f32 values are exact in f32.
        t = t.detach().reshape(n, -1)
        out[name] = t.to(torch.float64 if a.dtype == "float64" else torch.float32).cpu().contiguous()

    def first(o):
        return o[0] if isinstance(o, tuple) else o

    hooks = []

    def after(module, name):
        hooks.append(module.register_forward_hook(lambda m, i, o: put(name, first(o))))

    def before(module, name):
        hooks.append(module.register_forward_pre_hook(lambda m, i: put(name, i[0])))

    inner = model.model
    after(inner.embed_tokens, "embed")
    modeling = sys.modules[type(inner.layers[0].self_attn).__module__]
    rope = modeling.apply_rotary_pos_emb
    current = {"layer": None}

    def rotary(q, k, cos, sin, *rest, **kw):
        qe, ke = rope(q, k, cos, sin, *rest, **kw)
        l = current["layer"]
        # [1, heads, n, head_dim] -> [n, heads * head_dim]
        put(f"layers.{l}.q", qe.transpose(1, 2))
        put(f"layers.{l}.k", ke.transpose(1, 2))
        return qe, ke

    modeling.apply_rotary_pos_emb = rotary
    for l, layer in enumerate(inner.layers):
        p = f"layers.{l}"
        hooks.append(layer.register_forward_pre_hook(lambda m, i, l=l: current.update(layer=l)))
        at = layer.self_attn
        after(layer.input_layernorm, f"{p}.input_norm")
        after(at.q_proj, f"{p}.q_proj")
        after(at.k_proj, f"{p}.k_proj")
        after(at.v_proj, f"{p}.v")
        after(at.q_norm, f"{p}.q_norm")
        after(at.k_norm, f"{p}.k_norm")
        before(at.o_proj, f"{p}.attention")
        after(at.o_proj, f"{p}.o_proj")
        before(layer.post_attention_layernorm, f"{p}.attn_residual")
        after(layer.post_attention_layernorm, f"{p}.post_norm")
        after(layer.mlp, f"{p}.mlp")
        after(layer, f"{p}.output")
        gate = getattr(layer.mlp, "gate", None)
        if gate is not None and hasattr(gate, "top_k"):
            def routed(m, i, o, p=p):
                logits, weights, experts = o
                # lockstep's order: experts ascending, weights alongside.
                order = torch.argsort(experts, dim=-1)
                put(f"{p}.router_logits", logits)
                put(f"{p}.experts", torch.gather(experts, -1, order).to(torch.float64))
                put(f"{p}.expert_weights", torch.gather(weights, -1, order))
            hooks.append(gate.register_forward_hook(routed))
    after(inner.norm, "final_norm")
    after(model.lm_head, "logits")
    with torch.no_grad():
        model(input_ids=torch.tensor([tokens], device=a.device), use_cache=False)
    modeling.apply_rotary_pos_emb = rope
    for h in hooks:
        h.remove()

    os.makedirs(a.out, exist_ok=True)
    save_file(out, os.path.join(a.out, "tensors.safetensors"), metadata={"format": "lockstep-dump"})
    import transformers
    manifest = {
        "format": "lockstep-dump",
        "version": 1,
        "engine": f"transformers {transformers.__version__} eager {a.dtype} on {a.device}",
        "model_hash": a.model_hash,
        "precision": a.dtype,
        "tokens": tokens,
        "positions": list(range(n)),
    }
    with open(os.path.join(a.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print(f"{len(out)} tensors to {a.out}")


if __name__ == "__main__":
    main()
