#!/usr/bin/env python3
"""Per-kernel table of one decode step from an Nsight Compute CSV.

ci/device-cuda.sh's `profile` stage runs `lockstep bench --graphs off` under
`ncu --csv --page raw` with each kernel's duration and DRAM bytes. A decode
step ends with `argmax_bf16`; steps with the same kernel sequence are one
configuration (the fused and graph paths differ). For each configuration
this prints, per kernel name: launches per step, the median time of one
launch, the time per step, and the DRAM bandwidth those launches reached,
plus the step's total kernel time (launch gaps not included).

usage: ncu_summary.py NCU.csv [--json OUT]
"""
import csv
import json
import math
import statistics
import sys
from collections import OrderedDict, defaultdict


def rows_of(path):
    with open(path, newline="") as f:
        lines = [line for line in f if line.startswith('"')]
    reader = csv.reader(lines)
    header = next(reader)
    units = next(reader)
    scale = {}
    for name, unit in zip(header, units):
        scale[name] = {"ns": 1e-3, "us": 1.0, "usecond": 1.0, "nsecond": 1e-3, "msecond": 1e3, "ms": 1e3,
                       "byte": 1.0, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9, "KB": 1e3, "MB": 1e6}.get(unit, 1.0)
    for r in reader:
        d = dict(zip(header, r))

        def num(key):
            v = d.get(key, "").replace(",", "")
            try:
                return float(v) * scale[key]
            except ValueError:
                return float("nan")

        yield {
            "name": d["Kernel Name"].split("(")[0],
            "us": num("gpu__time_duration.sum"),
            "read": num("dram__bytes_read.sum"),
            "write": num("dram__bytes_write.sum"),
            "grid": d.get("launch__grid_size", ""),
            "block": d.get("launch__block_size", ""),
            "regs": d.get("launch__registers_per_thread", ""),
        }


def steps_of(kernels):
    step = []
    for k in kernels:
        step.append(k)
        if k["name"] in ("argmax_bf16", "argmax_rows_bf16"):
            yield step
            step = []


def main():
    path = sys.argv[1]
    out_json = sys.argv[sys.argv.index("--json") + 1] if "--json" in sys.argv else None
    groups = OrderedDict()
    for step in steps_of(rows_of(path)):
        names = tuple(k["name"] for k in step)
        # Decode steps have single-row products; prefill uses cuBLAS or the
        # 8-row kernels. A batched decode step ends in argmax_rows_bf16.
        batched = names[-1] == "argmax_rows_bf16"
        if not batched and "gemv1_bf16" not in names and "qkv_fused1_bf16" not in names:
            continue
        groups.setdefault(names, []).append(step)
    report = []
    for names, steps in groups.items():
        if len(steps) < 2:
            continue
        per_name = OrderedDict()
        for i, name in enumerate(names):
            # One product kernel serves several shapes: keep them apart by
            # grid, and by weight megabytes where they share a grid.
            # (half-octave buckets: part of a matrix may already sit in L2).
            mb = steps[0][i]["read"] / 1e6
            size = f"~{2 ** (round(math.log2(mb) * 2) / 2):.3g}MB" if mb >= 4 else ""
            e = per_name.setdefault(f"{name}[{steps[0][i]['grid']}]{size}", {"launches": 0, "us": [], "bytes": [], "grid": steps[0][i]["grid"],
                                           "block": steps[0][i]["block"], "regs": steps[0][i]["regs"]})
            e["launches"] += 1
            for s in steps:
                e["us"].append(s[i]["us"])
                e["bytes"].append(s[i]["read"] + s[i]["write"])
        n = len(steps)
        total = sum(sum(e["us"]) for e in per_name.values()) / n
        label = "fused" if any(n.startswith("qkv_fused") for n in names) else "graph"
        if batched:
            label += " (batched)"
        print(f"\n{path}: {label} path, {n} decode steps, {len(names)} launches per step, "
              f"kernel time per step {total:.1f} us")
        print(f"{'kernel[grid]':36} {'launches':>8} {'us each':>9} {'us/step':>9} {'share':>6} {'GB/s':>7}  grid/block/regs")
        rows = []
        for name, e in sorted(per_name.items(), key=lambda kv: -sum(kv[1]["us"])):
            per_step = sum(e["us"]) / n
            each = statistics.median(e["us"])
            gbs = sum(e["bytes"]) / (sum(e["us"]) * 1e-6) / 1e9 if sum(e["us"]) else 0.0
            print(f"{name:36} {e['launches']:8d} {each:9.2f} {per_step:9.1f} {per_step / total:6.1%} {gbs:7.0f}  "
                  f"{e['grid']}/{e['block']}/{e['regs']}")
            rows.append({"kernel": name, "launches_per_step": e["launches"], "median_us": each,
                         "us_per_step": per_step, "dram_gb_per_s": gbs})
        report.append({"path": label, "steps": n, "launches_per_step": len(names),
                       "kernel_us_per_step": total, "kernels": rows})
    if out_json:
        with open(out_json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
