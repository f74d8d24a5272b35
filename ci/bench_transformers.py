"""Times transformers' greedy decoding on a lockstep synthetic model folder,
on the GPU, with the same prompt ids and token counts as `lockstep bench`,
so the two are compared in one device call (ci/device-cuda.sh bench-hf-*).

Decode speed = N / (t(W + N new tokens) - t(W new tokens)): the prefill and
the first W tokens cancel out. Best of R repeats and the median, per mode:
eager (dynamic cache) and static cache (transformers compiles the decode
step with torch.compile for a static cache; reported as failed if it
cannot run offline).

usage: python3 ci/bench_transformers.py MODEL_DIR OUT.json [P W N R]
HF_MODES (comma-separated: eager, static_cache; default both) picks the modes.
HF_BATCH (comma-separated batch sizes, e.g. 1,8,32) times batched decode
instead: B prompts of P tokens each (`lockstep bench --batch`'s prompts:
sequence s shifted by s * 104729), all decoded together; tok/s counts every
sequence's tokens, and the JSON has one entry per batch size.
"""
import os
import json
import statistics
import sys
import time

import torch
import transformers
from transformers import AutoModelForCausalLM

model_dir, out = sys.argv[1], sys.argv[2]
P, W, N, R = (int(x) for x in (sys.argv[3:7] if len(sys.argv) >= 7 else (16, 32, 256, 3)))

model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).cuda().eval()
vocab = model.config.vocab_size
batches = [int(b) for b in os.environ.get("HF_BATCH", "").split(",") if b]
prompt = torch.tensor([[(1 + i * 7919) % vocab for i in range(P)]], device="cuda")


def batch_prompt(b):
    return torch.tensor([[((1 + i * 7919) % vocab + s * 104729) % vocab for i in range(P)] for s in range(b)],
                        device="cuda")


def timed(new_tokens, **kw):
    torch.cuda.synchronize()
    t = time.perf_counter()
    with torch.no_grad():
        ids = model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             do_sample=False, eos_token_id=None, pad_token_id=0, **kw)
    torch.cuda.synchronize()
    return time.perf_counter() - t, ids[:, P:].tolist()


result = {"model_dir": model_dir, "device": torch.cuda.get_device_name(0),
          "torch": torch.__version__, "transformers": transformers.__version__,
          "prompt_tokens": P, "warmup_tokens": W, "measured_tokens": N, "repeats": R,
          "modes": {}}
wanted = os.environ.get("HF_MODES", "eager,static_cache").split(",")


def run_modes(b):
    """Every wanted mode at batch b: tok/s over all b sequences."""
    global prompt
    modes = {}
    for mode, kw in [("eager", {}), ("static_cache", {"cache_implementation": "static"})]:
        if mode not in wanted:
            continue
        try:
            timed(W + N, **kw)  # warm-up (and compilation, for the static cache)
            speeds = []
            for _ in range(R):
                short, _ = timed(W, **kw)
                full, toks = timed(W + N, **kw)
                speeds.append(b * N / (full - short))
            modes[mode] = {"best_tok_s": max(speeds), "median_tok_s": statistics.median(speeds),
                           "best_ms_per_step": 1e3 * b / max(speeds), "repeats_tok_s": speeds,
                           "tokens": toks[0] if b == 1 and not batches else toks}
        except Exception as e:  # report, do not hide: the JSON says why
            modes[mode] = {"error": f"{type(e).__name__}: {e}"[:2000]}
        print(f"batch {b}", mode, {k: v for k, v in modes[mode].items() if k != "tokens"}, flush=True)
    return modes


if batches:
    result["batches"] = {}
    for b in batches:
        prompt = batch_prompt(b)
        result["batches"][str(b)] = run_modes(b)
        json.dump(result, open(out, "w"), indent=2)
else:
    result["modes"] = run_modes(1)
json.dump(result, open(out, "w"), indent=2)
