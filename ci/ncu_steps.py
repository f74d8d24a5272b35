#!/usr/bin/env python3
"""Kernels per decode step and their GPU time, from two Nsight Compute runs
of one greedy generation that differ only in length (ci/device-mlx.sh
`kernels`: `ncu-PRESET-PATH-2.csv` and `-4.csv`, 2 and 4 tokens).

Where a backend's step cannot be told apart from the kernels' names (MLX's
CUDA kernels carry no step marker), the difference of the two runs is two
decode steps: launches per step = (launches(4) - launches(2)) / 2, and the
same for GPU time, per kernel name and in all. The GPU time is each
kernel's own duration (Nsight Compute runs one at a time); launch gaps and
host time are not in it, which is what the step's wall time adds.

usage: ncu_steps.py OUT_DIR PRESET PATH... [--json OUT]
"""
import json
import os
import re
import sys
from collections import Counter, defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ncu_summary import rows_of  # noqa: E402


def short(name):
    """A kernel's name without its namespace, template arguments or parameters."""
    base = re.split(r"[<(]", name.replace("void ", "", 1), maxsplit=1)[0]
    return base.split("::")[-1].strip() or name[:60]


def tally(path):
    counts, us = Counter(), defaultdict(float)
    for k in rows_of(path):
        n = short(k["name"])
        counts[n] += 1
        us[n] += k["us"]
    return counts, us


def main():
    args = [a for a in sys.argv[1:] if a != "--json"]
    out_json = sys.argv[sys.argv.index("--json") + 1] if "--json" in sys.argv else None
    if out_json:
        args.remove(out_json)
    out, preset, paths = args[0], args[1], args[2:]
    report = {}
    for path in paths:
        try:
            (c2, t2), (c4, t4) = (tally(f"{out}/ncu-{preset}-{path}-{n}.csv") for n in (2, 4))
        except (OSError, RuntimeError, StopIteration, KeyError) as e:
            print(f"{preset} {path}: no usable profile ({type(e).__name__}: {e})")
            continue
        names = sorted(set(c4) | set(c2), key=lambda n: -(t4[n] - t2[n]))
        per = {n: {"launches": (c4[n] - c2[n]) / 2, "us": (t4[n] - t2[n]) / 2} for n in names}
        per = {n: v for n, v in per.items() if v["launches"]}
        launches = sum(v["launches"] for v in per.values())
        us = sum(v["us"] for v in per.values())
        report[path] = {"launches_per_step": launches, "gpu_us_per_step": us, "kernels": per}
        print(f"\n{preset} {path}: {launches:g} kernel launches and {us:.1f} us of GPU time per decode step")
        print(f"  {'kernel':<48} {'launches':>9} {'us/step':>9}")
        for n, v in per.items():
            print(f"  {n[:48]:<48} {v['launches']:9g} {v['us']:9.1f}")
    if out_json:
        with open(out_json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
