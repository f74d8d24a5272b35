#!/usr/bin/env bash
# Builds the release CLI (and, with --features, CUDA-enabled test binaries)
# here and copies them into .device/ (git-ignored), which the device tool
# carries to the GPU machine (64 MiB at most).
set -euo pipefail
cd "$(dirname "$0")/.."
features="${LOCKSTEP_FEATURES:-}"
cargo build --release ${features:+--features "$features"} --bin lockstep
rm -rf .device && mkdir -p .device/bin
cp target/release/lockstep .device/bin/
strip .device/bin/lockstep 2>/dev/null || true
du -sh .device
