"""One table per model from one device call's bench files: lockstep's MLX
rows (`lockstep bench --backend mlx-gpu`), lockstep's CUDA backend, mlx-lm
(ci/bench_mlx_lm.py) and transformers (ci/bench_transformers.py), with each
engine's greedy tokens set against lockstep's MLX graph path (first step
where they part, of the steps both produced).

usage: python3 ci/bench_summary.py OUT_DIR PRESET...
"""
import json
import os
import sys


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        print(f"  ({os.path.basename(path)}: {e})")
        return None


def parts_at(a, b):
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), None), n


def lockstep_rows(rep, engine):
    for r in rep["rows"]:
        if r.get("mode"):
            name = f"{r['path']} ({r['mode']}, graphs {'on' if r.get('cuda_graphs') else 'off'})"
        else:
            name = r["path"]
            if r.get("mlx_fused"):
                name += f" ({r['mlx_fused']})"
            if r.get("mlx_pipelined") is not None:
                name += ", pipeline " + ("on" if r["mlx_pipelined"] else "off")
        yield f"{engine} {name}", r["best_tok_s"], r["median_tok_s"], r.get("pct_of_roofline"), r["tokens"]


def main(out, presets):
    for preset in presets:
        mlx = load(f"{out}/bench-mlx-{preset}.json")
        rows = []
        if mlx:
            rows += list(lockstep_rows(mlx, "lockstep mlx"))
        cuda = load(f"{out}/bench-cuda-{preset}.json")
        if cuda:
            rows += list(lockstep_rows(cuda, "lockstep cuda"))
        lm = load(f"{out}/mlx-lm-{preset}.json")
        if lm:
            pct = 100 * lm["best_tok_s"] / mlx["roofline_tok_s"] if mlx else None
            rows.append(("mlx-lm", lm["best_tok_s"], lm["median_tok_s"], pct, lm["tokens"]))
        hf = load(f"{out}/transformers-{preset}.json")
        for mode, m in (hf or {}).get("modes", {}).items():
            if "error" in m:
                print(f"  transformers {mode}: {m['error'][:200]}")
                continue
            rows.append((f"transformers {mode}", m["best_tok_s"], m["median_tok_s"], None, m["tokens"]))
        if not rows:
            continue
        # Tokens are set against lockstep's MLX graph path (pipelined where
        # timed so), else the first row.
        ref_row = next((r for r in rows if r[0].startswith("lockstep mlx graph")), rows[0])
        ref = ref_row[4]
        print(f"\n{preset}" + (f" on {mlx['device']}; MLX roofline {mlx['roofline_tok_s']:.1f} tok/s "
                              f"({mlx['copy_bandwidth_gb_s']:.0f} GB/s)" if mlx else ""))
        print(f"  {'engine':<52} {'best':>8} {'median':>8} {'%roof':>6}  tokens vs {ref_row[0]}")
        for name, best, med, pct, toks in rows:
            at, n = parts_at(ref, toks)
            same = f"same over {n}" if at is None else f"part at step {at} of {n}"
            pcts = f"{pct:6.1f}" if pct is not None else "     -"
            print(f"  {name:<52} {best:8.1f} {med:8.1f} {pcts}  {same}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
