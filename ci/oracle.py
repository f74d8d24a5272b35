#!/usr/bin/env python3
"""External oracle: greedy decoding with Hugging Face transformers' Qwen3 on a
lockstep model folder, written as a golden/reference/*.json file.

Runs where torch and transformers are installed (the device machine). Eager
attention, so rounding happens at well-defined places; float32 runs disable
TF32 so matrix products are true float32; float64 runs keep their logits in
float64 (the others are stored as float32). Per step it stores the top-k,
the logits at every `stride`-th index, and statistics of the full vector.
"""
import argparse
import json
import logging
import platform

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--preset", required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--model-hash", required=True)
    ap.add_argument("--dtype", choices=["float64", "float32", "bfloat16"], required=True)
    ap.add_argument("--prompt", required=True, help="comma-separated token ids")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--stride", type=int, default=1)
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")

    warnings = []

    class Collect(logging.Handler):
        def emit(self, record):
            if record.levelno >= logging.WARNING:
                warnings.append(record.getMessage())

    transformers.logging.get_logger().addHandler(Collect())

    dtype = getattr(torch, a.dtype)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # MoE models: the eager expert loop (one product per expert, as
    # lockstep's reference runs them); the default grouped_mm takes no
    # float64 and rounds in its own order.
    extra = {}
    with open(f"{a.model}/config.json") as f:
        if any("Moe" in x for x in json.load(f).get("architectures", [])):
            extra["experts_implementation"] = "eager"
    model, info = AutoModelForCausalLM.from_pretrained(
        a.model, dtype=dtype, attn_implementation="eager", output_loading_info=True, **extra
    )
    model = model.to(device).eval()
    info = {k: sorted(str(x) for x in v) for k, v in info.items() if isinstance(v, (list, set, tuple))}

    prompt = [int(x) for x in a.prompt.split(",")]
    steps, tokens = [], []
    with torch.no_grad():
        out = model(input_ids=torch.tensor([prompt], device=device), use_cache=True)
        for _ in range(a.steps):
            row = out.logits[0, -1]
            if a.dtype == "float64":
                logits = row.cpu().numpy().astype(np.float64)
            else:
                logits = row.float().cpu().numpy().astype(np.float32)
            order = np.lexsort((np.arange(logits.size), -logits.astype(np.float64)))[: a.top_k]
            tok = int(np.argmax(logits))  # first maximum, as torch.argmax and lockstep
            v64 = logits.astype(np.float64)
            steps.append(
                {
                    "token": tok,
                    "top": [[int(i), float(logits[i])] for i in order],
                    "sample": [float(x) for x in logits[:: a.stride]],
                    "stats": {
                        "mean": float(v64.mean()),
                        "rms": float(np.sqrt((v64 * v64).mean())),
                        "max": float(v64.max()),
                        "argmax": tok,
                    },
                }
            )
            tokens.append(tok)
            out = model(
                input_ids=torch.tensor([[tok]], device=device),
                past_key_values=out.past_key_values,
                use_cache=True,
            )

    ref = {
        "schema": 1,
        "preset": a.preset,
        "seed": a.seed,
        "model_hash": a.model_hash,
        "dtype": a.dtype,
        "attn_implementation": "eager",
        "tf32": False,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "cpu",
        "loading_info": {"keys": info, "warnings": warnings},
        "stride": a.stride,
        "prompt": prompt,
        "tokens": tokens,
        "steps": steps,
    }
    with open(a.out, "w") as f:
        json.dump(ref, f, separators=(",", ":"))
        f.write("\n")
    bad = {k: v for k, v in info.items() if v}
    print(f"{a.preset} {a.dtype}: tokens {tokens[:12]}... loading problems: {bad or 'none'}; warnings: {len(warnings)}")
    if bad:
        raise SystemExit(f"transformers reported weight problems: {bad}")


if __name__ == "__main__":
    main()
