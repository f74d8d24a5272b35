#!/usr/bin/env bash
# Fetches the wheels of ci/mlx-lm-requirements.txt from PyPI (hashes
# pinned there) into .device-mlx/wheels/, for the GPU machine's Python 3.12
# on x86_64 Linux: about 3 MB, carried with the MLX pack (.device-mlx).
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.device-mlx/wheels
mkdir -p "$dest"
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
  --platform manylinux_2_35_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --require-hashes -r ci/mlx-lm-requirements.txt -d "$dest"
ls -la "$dest"
