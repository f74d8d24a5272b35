#!/usr/bin/env bash
# Runs on the device machine (see ci/bundle.sh): writes synthetic folders,
# runs transformers on them (ci/oracle.py) in float32 and bfloat16, then runs
# lockstep's CPU reference against each reference file. Files land in $OUT.
set -uo pipefail
BIN=.device/bin/lockstep
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/models
log="$OUT/oracle-log.txt"
export PYTHONUNBUFFERED=1
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__, torch.cuda.get_device_name(0))' | tee -a "$log"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee -a "$log"
presets="${PRESETS:-tiny tiny-moe qwen3-0.6b}"
for preset in $presets; do
  case $preset in
    qwen3-0.6b) prompt=9707,11,1879,13,576,3974,14198,38835; stride=64 ;;
    *) prompt=1,17,42,99,3,250,7,8; stride=1 ;;
  esac
  dir=/tmp/models/$preset
  $BIN synth --preset "$preset" --seed 0 --out "$dir" | tee -a "$log"
  sha256sum "$dir"/*.safetensors | head -2 | tee -a "$log"
  hash=$($BIN info --model "$dir" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["model_hash"])')
  echo "$preset hash $hash" | tee -a "$log"
  for dtype in float32 bfloat16; do
    f="$OUT/$preset-$dtype.json"
    python3 ci/oracle.py --model "$dir" --preset "$preset" --seed 0 --model-hash "$hash" \
      --dtype $dtype --prompt $prompt --steps 64 --stride $stride --out "$f" 2>&1 | tail -5 | tee -a "$log"
    ( time $BIN compare-reference --reference "$f" --model "$dir" ) 2>&1 | tee -a "$log"
  done
done
