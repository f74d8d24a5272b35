#!/usr/bin/env python3
"""Kernels per decode step and their GPU time, from two Nsight Compute runs
of one greedy generation that differ only in length (ci/device-mlx.sh
`kernels`: `ncu-PRESET-PATH-2.csv` and `-4.csv`, 2 and 4 tokens).

Where a backend's step cannot be told apart from the kernels' names (MLX's
CUDA kernels carry no step marker), the two runs tell it: the longer run
launches (launches(4) - launches(2)) more kernels, two decode steps' worth,
and its last that many kernels are two steady-state decode steps (the
kernels after the last step, the same in both runs, only shift the window
along identical steps). Per kernel name and in all, launches and GPU time
per step are that window's, halved. The sums of whole runs are not used:
the first launches of a run include MLX's first touch of its (managed)
weight memory, tens of milliseconds. The GPU time is each kernel's own
duration (Nsight Compute runs one at a time); launch gaps and host time
are not in it, which is what the step's wall time adds.

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


def kernels(path):
    return [(short(k["name"]), k["us"]) for k in rows_of(path)]


def main():
    args = [a for a in sys.argv[1:] if a != "--json"]
    out_json = sys.argv[sys.argv.index("--json") + 1] if "--json" in sys.argv else None
    if out_json:
        args.remove(out_json)
    out, preset, paths = args[0], args[1], args[2:]
    report = {}
    for path in paths:
        try:
            short_run, long_run = (kernels(f"{out}/ncu-{preset}-{path}-{n}.csv") for n in (2, 4))
        except (OSError, RuntimeError, StopIteration, KeyError) as e:
            print(f"{preset} {path}: no usable profile ({type(e).__name__}: {e})")
            continue
        extra = len(long_run) - len(short_run)
        if extra <= 0 or extra % 2:
            print(f"{preset} {path}: {len(short_run)} and {len(long_run)} kernels do not differ by two like steps")
            continue
        counts, us = Counter(), defaultdict(float)
        for name, t in long_run[-extra:]:
            counts[name] += 1
            us[name] += t
        per = {n: {"launches": counts[n] / 2, "us": us[n] / 2} for n in sorted(counts, key=lambda n: -us[n])}
        launches = extra / 2
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
