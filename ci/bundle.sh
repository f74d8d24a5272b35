#!/usr/bin/env bash
# Builds, here, what the GPU machine runs, and puts it in .device/ (git-
# ignored; the device tool carries it, 64 MiB at most):
#   .device/bin/lockstep        the CLI (release, --features cuda)
#   .device/tests/<name>        the test binaries that run CUDA (release, --features cuda)
# cudarc loads libcuda / NVRTC at run time, so this builds without CUDA.
# LOCKSTEP_FEATURES=cuda,mlx adds MLX (run on MLX's CUDA build by
# ci/device-mlx.sh, with the library ci/mlx_cuda_pack.py packs).
# LOCKSTEP_DEVICE_DIR=.device-b puts a second build beside the first, so one
# device call can time two builds (carry both; ci/device-cuda.sh reads the
# same variable).
set -euo pipefail
cd "$(dirname "$0")/.."
features="${LOCKSTEP_FEATURES:-cuda}"
cargo build --release --features "$features" --bin lockstep
dir="${LOCKSTEP_DEVICE_DIR:-.device}"
rm -rf "$dir" && mkdir -p "$dir/bin" "$dir/tests"
cp target/release/lockstep "$dir/bin/"
tests="--test accelerators --test cuda_backend --test cuda_kernels"
# With MLX compiled in (LOCKSTEP_FEATURES=cuda,mlx, for ci/device-mlx.sh),
# MLX's own tests go too.
case ",$features," in *,mlx,*) tests="$tests --test mlx_backend" ;; esac
cargo test --release --features "$features" --no-run --message-format=json \
  $tests 2>/dev/null |
  python3 -c '
import json, sys, shutil, os
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        shutil.copy(m["executable"], os.path.join(sys.argv[1], "tests", m["target"]["name"]))
        print("bundled", m["target"]["name"])
' "$dir"
strip "$dir"/bin/* "$dir"/tests/* 2>/dev/null || true
du -sh "$dir"
