# Sourced by ci/device-cuda.sh and ci/device-mlx.sh: what both do on the GPU
# machine. $OUT collects logs and results (the device tool brings back at
# most 8 files from it); `step` runs one command into log.txt, timed, and
# records a failure in $rc; `archive_results` packs everything but log.txt
# into one results.tgz.
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
rc=0
step() {
  local t0=$SECONDS
  echo "== $*" | tee -a "$OUT/log.txt"
  "$@" 2>&1 | tee -a "$OUT/log.txt"
  [ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
  echo "   ($((SECONDS - t0)) s)" | tee -a "$OUT/log.txt"
}
archive_results() {
  # One file instead of many; log.txt stays beside it so the call's output
  # can be read without unpacking.
  tar czf /tmp/lockstep-results.tgz -C "$OUT" --exclude=./results.tgz . &&
    find "$OUT" -mindepth 1 -maxdepth 1 ! -name log.txt -exec rm -rf {} + &&
    mv /tmp/lockstep-results.tgz "$OUT/results.tgz" || rc=1
  ls "$OUT"
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee -a "$OUT/log.txt"
