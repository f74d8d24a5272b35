#!/usr/bin/env bash
# Runs on the GPU machine after ci/bundle.sh: the CUDA tests with skips
# turned into failures, one test at a time (one GPU), logs into $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
log="$OUT/cuda-tests.log"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$log"
export LOCKSTEP_REQUIRE_GPU=1
rc=0
for t in cuda_kernels cuda_backend; do
  echo "== $t" | tee -a "$log"
  .device/tests/$t --test-threads 1 --nocapture 2>&1 | tee -a "$log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
done
.device/bin/lockstep env 2>&1 | tee -a "$log"
exit $rc
