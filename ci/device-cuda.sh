#!/usr/bin/env bash
# Runs on the GPU machine after ci/bundle.sh (device tool: carry .device):
#   OUT=$OUT bash ci/device-cuda.sh STAGE...
# Stages (in order given): goldens (regen CUDA goldens), tests, bench-small (tiny, 0.6b), bench-8b,
# bench-30b, big (qwen3-8b parity; LOCKSTEP_BIG_MODELS), profile (ncu per kernel),
# bench-hf-0.6b / bench-hf-8b (transformers on the same weights), envelopes (0.6b op level N=100 and greedy N=20 x 256 per mode),
# bench-batch (batched decode, det vs fast, and transformers at the same batch sizes),
# bench-ab (builds in AB_DIRS, default .device and .device-b), verify (the main job with CUDA's rows),
# batch-envelope (one sequence across batch compositions, per setting),
# mma-probe (does an MMA output depend on its place in the tile), handover-probe (stage handover
# costs: launches with PDL against a persistent kernel's grid barriers), archive.
# Logs and JSON go to $OUT; one GPU, one thing at a time. The device tool brings back at most 8 files
# from $OUT, so a call that writes more ends with `archive`: everything in one results.tgz, plus log.txt.
set -uo pipefail
source "$(dirname "$0")/device-common.sh"
export LOCKSTEP_REQUIRE_GPU=1
D=${LOCKSTEP_DEVICE_DIR:-.device}
L=$D/bin/lockstep
for stage in "$@"; do
  case $stage in
    tests)
      step $D/tests/cuda_kernels --test-threads 1 --nocapture
      step $D/tests/accelerators --test-threads 1 --nocapture cuda::
      step $D/tests/cuda_backend --test-threads 1 --nocapture
      step $L env --json ;;
    verify)
      # The main job with CUDA's rows (a --features cuda build on a GPU).
      step $L verify --root . ;;
    goldens)
      # Writes golden/*__cuda__*.snap in this copy (checked by the tests that
      # follow) and a copy under $OUT to commit.
      step $L golden regen --backend cuda --root .
      mkdir -p "$OUT/golden" && cp golden/*__cuda__*.snap "$OUT/golden/" ;;
    big)
      step $D/tests/cuda_backend --test-threads 1 --nocapture --ignored large_models ;;
    profile)
      # Nsight Compute, one pass per kernel: its duration and DRAM bytes, the
      # clocks left alone and caches not flushed (as in a decode step), graphs off
      # so every launch is seen. ci/ncu_summary.py turns the CSV into a table.
      # PROFILE_ARGS adds bench flags; a batched step (PROFILE_ARGS='--batch 32
      # --products tensor-cores') is never recorded: set PROFILE_GRAPHS= (empty).
      # NCU_ARGS adds ncu flags (--kernel-name regex:... to skip the prefills).
      NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
      for preset in ${PROFILE_PRESETS:-qwen3-0.6b qwen3-8b}; do
        step "$NCU" --clock-control none --cache-control none ${NCU_ARGS:-} \
          --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,launch__grid_size,launch__block_size,launch__registers_per_thread \
          --csv --page raw --log-file "$OUT/ncu-$preset.csv" \
          $L bench --model synth:$preset --paths ${PROFILE_PATHS:-fused,graph} --modes deterministic ${PROFILE_GRAPHS---graphs off} \
          --warmup 2 --tokens 4 --repeats 1 ${PROFILE_ARGS:-}
        python3 ci/ncu_summary.py "$OUT/ncu-$preset.csv" | tee -a "$OUT/log.txt"
      done ;;
    bench-small)
      step $L bench --model synth:tiny --graphs on,off --tokens 128 --out "$OUT/bench-tiny.json"
      step $L bench --model synth:qwen3-0.6b --graphs on,off --out "$OUT/bench-qwen3-0.6b.json" ;;
    bench-8b)
      step $L bench --model synth:qwen3-8b --graphs on,off --out "$OUT/bench-qwen3-8b.json" ;;
    bench-30b)
      step $L bench --model synth:qwen3-30b-a3b --graphs on,off --modes deterministic --warmup 8 \
        --tokens 64 --repeats 2 --out "$OUT/bench-qwen3-30b-a3b.json" ;;
    bench-ab)
      # Several builds in one call (ci/bundle.sh, then LOCKSTEP_DEVICE_DIR=.device-b
      # ci/bundle.sh, ...; carry them all; AB_DIRS lists them): deterministic
      # decode of 0.6b and 8b, each build in turn, so their ratios come from
      # one machine.
      for preset in ${AB_PRESETS:-qwen3-0.6b qwen3-8b}; do
        for dir in ${AB_DIRS:-.device .device-b}; do
          step $dir/bin/lockstep bench --model synth:$preset --modes deterministic --graphs on \
            --out "$OUT/bench-ab-$preset-${dir#.}.json"
        done
      done ;;
    bench-hf-0.6b|bench-hf-8b)
      preset=qwen3-${stage#bench-hf-}
      dir=/tmp/lockstep-$preset
      [ -d $dir ] || step $L synth --preset $preset --out $dir
      step timeout 400 python3 ci/bench_transformers.py $dir "$OUT/transformers-$preset.json" ${HF_ARGS:-} ;;
    bench-batch)
      # Batched decode, deterministic (batch invariant) vs fast, then
      # transformers' static cache at the same batch sizes on the same
      # weights (BATCH_PRESETS, BATCH_SIZES, BATCH_PRODUCTS, BATCH_ARGS, HF_BATCH_SIZES).
      for preset in ${BATCH_PRESETS:-qwen3-0.6b qwen3-8b}; do
        step $L bench --model synth:$preset --batch ${BATCH_SIZES:-1,8,32,64} --products ${BATCH_PRODUCTS:-cuda-cores,tensor-cores} \
          ${BATCH_ARGS:---warmup 16 --tokens 128 --repeats 2} \
          --out "$OUT/bench-batch-$preset.json"
        if [ -z "${NO_HF:-}" ]; then
          dir=/tmp/lockstep-$preset
          [ -d $dir ] || step $L synth --preset $preset --out $dir
          step env HF_MODES=static_cache HF_BATCH=${HF_BATCH_SIZES:-${BATCH_SIZES:-1,8,32,64}} \
            timeout ${HF_TIMEOUT:-300} python3 ci/bench_transformers.py $dir "$OUT/transformers-batch-$preset.json" 16 16 128 2
          rm -rf $dir
        fi
      done ;;
    envelopes)
      for mode in deterministic fast; do
        for path in graph fused; do
          for kind in op greedy; do
            if [ $kind = op ]; then args="--steps 0 --level op --runs 100"; else args="--steps 256 --runs 20 --cuda-graphs"; fi
            echo "== envelope $kind $mode $path" | tee -a "$OUT/log.txt"
            $L envelope --backend cuda --model synth:qwen3-0.6b --mode $mode --path $path $args \
              --report "$OUT/$kind-$mode-$path" > "$OUT/$kind-$mode-$path.txt" 2>&1 || rc=1
            head -40 "$OUT/$kind-$mode-$path.txt" | tee -a "$OUT/log.txt"
          done
        done
      done ;;
    batch-envelope)
      # One sequence alone and in nine batch compositions of 2-32 (lockstep
      # batch), per path and setting: bitwise where batch invariance is
      # promised, fast mode's envelope otherwise (BATCH_ENVELOPE_PRESETS).
      for preset in ${BATCH_ENVELOPE_PRESETS:-tiny qwen3-0.6b}; do
        for path in graph fused; do
          for setting in "--mode deterministic" "--mode deterministic --products tensor-cores" "--mode fast"; do
            step $L batch --backend cuda --model synth:$preset --path $path $setting --steps 16
          done
        done
      done ;;
    mma-probe)
      # Whether an m16n8k16 bf16 MMA's output depends on where its row or
      # column sits in the tile (linear_tc.cu's batch invariance rests on
      # it not doing so): random tiles, shifted, compared bit for bit.
      step nvcc -arch=sm_90 -O2 -o /tmp/mma_position_probe ci/mma_position_probe.cu
      step /tmp/mma_position_probe ;;
    handover-probe)
      # What handing a dependent stage to the next costs (a qwen3-0.6b-shaped
      # chain of one-row products): CUDA-graph launches with and without PDL,
      # a persistent kernel with grid barriers, and the bytes alone.
      step nvcc -arch=sm_90 -O2 -o /tmp/handover_probe ci/handover_probe.cu
      step /tmp/handover_probe ;;
    archive)
      archive_results ;;
    *) echo "unknown stage $stage"; rc=1 ;;
  esac
done
exit $rc
