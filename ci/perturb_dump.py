#!/usr/bin/env python3
"""Copies a lockstep dump (docs/dump-format.md) with one tensor scaled: a
planted bug for `lockstep compare --theirs` and `lockstep bisect` to find.
Plain python3, no packages.

    python3 ci/perturb_dump.py DUMP OUT layers.1.attention 1.1
"""
import array
import json
import os
import shutil
import struct
import sys


def main():
    src, dst, name, factor = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    os.makedirs(dst, exist_ok=True)
    shutil.copy(os.path.join(src, "manifest.json"), os.path.join(dst, "manifest.json"))
    with open(os.path.join(src, "tensors.safetensors"), "rb") as f:
        data = bytearray(f.read())
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    if name not in header:
        sys.exit(f"{src}: no tensor {name!r}")
    t = header[name]
    code = {"F32": "f", "F64": "d"}.get(t["dtype"])
    if code is None:
        sys.exit(f"{name}: dtype {t['dtype']} (this script scales F32 and F64)")
    start, end = (8 + n + o for o in t["data_offsets"])
    values = array.array(code, bytes(data[start:end]))
    for i in range(len(values)):
        values[i] *= factor
    data[start:end] = values.tobytes()
    with open(os.path.join(dst, "tensors.safetensors"), "wb") as f:
        f.write(data)
    print(f"{name} x {factor} -> {dst}")


if __name__ == "__main__":
    main()
