"""Times mlx-lm's greedy decoding of a lockstep synthetic model folder on
MLX's GPU device, with the same prompt ids and token counts as
`lockstep bench`, so that MLX's own engine and lockstep's MLX backend are
compared on one MLX build in one device call (ci/device-mlx.sh bench).

The clock covers tokens W+1 .. W+N of one greedy run (the prefill and the
first W tokens are warm-up), as `lockstep bench` times its own loop; mlx-lm
queues step i+1 before token i is read (`mx.async_eval`), so a token is
counted when the host has it. Best of R repeats and the median; the tokens
of the first repeat go into the JSON for comparison with lockstep's.

usage: python3 ci/bench_mlx_lm.py MODEL_DIR OUT.json [P W N R]
"""
import json
import statistics
import sys
import time
from pathlib import Path

import mlx.core as mx
import mlx_lm
from mlx_lm.generate import generate_step
from mlx_lm.utils import load_model

model_dir, out = sys.argv[1], sys.argv[2]
P, W, N, R = (int(x) for x in (sys.argv[3:7] if len(sys.argv) >= 7 else (16, 32, 256, 3)))

model, config = load_model(Path(model_dir))
vocab = config["vocab_size"]
# lockstep's bench_prompt: token i is (1 + 7919 i) mod vocab.
prompt = mx.array([(1 + i * 7919) % vocab for i in range(P)], dtype=mx.uint32)


def greedy(x):
    return mx.argmax(x, axis=-1)


def run():
    tokens, t0, t1 = [], None, None
    for i, (tok, _) in enumerate(generate_step(prompt, model, max_tokens=W + N + 1, sampler=greedy)):
        tokens.append(int(tok if isinstance(tok, int) else tok.item()))
        if i == W:
            t0 = time.perf_counter()
        elif i == W + N:
            t1 = time.perf_counter()
            break
    return N / (t1 - t0), tokens


result = {"model_dir": model_dir, "engine": "mlx-lm", "mlx_lm": mlx_lm.__version__,
          "mlx": mx.__version__, "device": str(mx.default_device()),
          "prompt_tokens": P, "warmup_tokens": W, "measured_tokens": N, "repeats": R}
try:
    result["gpu"] = mx.cuda.is_available() and mx.device_info().get("device_name")
except Exception as e:  # the device's name is a detail; say why it is missing
    result["gpu"] = f"(not reported: {type(e).__name__}: {e})"
run()  # warm-up: kernel compilation, allocator
speeds, outputs = [], []
for _ in range(R):
    s, toks = run()
    speeds.append(s)
    outputs.append(toks)
result.update({"best_tok_s": max(speeds), "median_tok_s": statistics.median(speeds),
               "repeats_tok_s": speeds, "distinct_outputs": len({tuple(o) for o in outputs}),
               "tokens": outputs[0]})
print({k: v for k, v in result.items() if k != "tokens"}, flush=True)
json.dump(result, open(out, "w"), indent=2)
