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
prompt = torch.tensor([[(1 + i * 7919) % vocab for i in range(P)]], device="cuda")


def timed(new_tokens, **kw):
    torch.cuda.synchronize()
    t = time.perf_counter()
    with torch.no_grad():
        ids = model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             do_sample=False, eos_token_id=None, pad_token_id=0, **kw)
    torch.cuda.synchronize()
    return time.perf_counter() - t, ids[0, P:].tolist()


result = {"model_dir": model_dir, "device": torch.cuda.get_device_name(0),
          "torch": torch.__version__, "transformers": transformers.__version__,
          "prompt_tokens": P, "warmup_tokens": W, "measured_tokens": N, "repeats": R,
          "modes": {}}
wanted = os.environ.get("HF_MODES", "eager,static_cache").split(",")
for mode, kw in [("eager", {}), ("static_cache", {"cache_implementation": "static"})]:
    if mode not in wanted:
        continue
    try:
        timed(W + N, **kw)  # warm-up (and compilation, for the static cache)
        speeds = []
        for _ in range(R):
            short, _ = timed(W, **kw)
            full, toks = timed(W + N, **kw)
            speeds.append(N / (full - short))
        result["modes"][mode] = {"best_tok_s": max(speeds), "median_tok_s": statistics.median(speeds),
                                 "repeats_tok_s": speeds, "tokens": toks}
    except Exception as e:  # report, do not hide: the JSON says why
        result["modes"][mode] = {"error": f"{type(e).__name__}: {e}"[:2000]}
    print(mode, {k: v for k, v in result["modes"][mode].items() if k != "tokens"}, flush=True)
json.dump(result, open(out, "w"), indent=2)
