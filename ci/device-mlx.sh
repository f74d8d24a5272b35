#!/usr/bin/env bash
# Runs on the GPU machine: lockstep's MLX backend on MLX's CUDA build.
# Here, first: LOCKSTEP_FEATURES=cuda,mlx bash ci/bundle.sh,
# python3 ci/mlx_cuda_pack.py and (for mlx-lm) bash ci/mlx_lm_wheels.sh;
# carry .device and .device-mlx; then there:
#   OUT=$OUT bash ci/device-mlx.sh STAGE...
# The binaries were linked against the mlx-cpu wheel's libmlx; the CUDA
# libmlx of the same version takes its place through LD_LIBRARY_PATH (the
# binaries carry DT_RUNPATH), and finds cuBLAS, cuDNN, NVRTC, NCCL and CUDA's
# headers through an `nvidia` link beside it into the machine's Python
# environment (its RPATH is $ORIGIN/../../nvidia/*/lib). docs/mlx.md says why.
# Stages (in order given): env, goldens (regen the mlx-gpu goldens here and
# copy them to $OUT), tests (the shared suite on MLX's GPU and the MLX-GPU
# tests of mlx_backend: the fused CUDA kernels), cuda-tests (the CUDA
# backend's tests from the same bundle), verify (its rows; VERIFY_FILTER,
# default @mlx-gpu), envelopes (op level N=100 and greedy N=20 x 256, both
# paths, of ENV_PRESETS (tiny qwen3-0.6b) and ENV_KINDS (op greedy) on
# MLX's GPU, or on ENV_TARGET named ENV_NAME, e.g. "--backend cuda --mode
# fast" and cuda-fast), containment (fused inside graph's envelope at
# op level and on greedy runs: CONTAIN_PRESETS on CONTAIN_TARGET), bench (decode speed of MLX's paths, pipelined and
# not, of the CUDA backend, of mlx-lm on the same MLX build and of transformers, on
# the same weights; BENCH_PRESETS; their greedy tokens compared), big (the
# ignored large-model test: op level at BIG_MODELS, logits vs the CPU for
# dense ones), bench-big (MLX decode of BIG_BENCH, shorter; MoE routed on
# BIG_MOE_ROUTING, host,device by default), dumps (trace on CUDA, MLX-GPU
# and transformers for compare --theirs), bench-big-cuda
# (the CUDA backend's, likewise), kernels
# (Nsight Compute: kernels and GPU time per decode step of qwen3-0.6b, per
# path), cpu-tests (MLX's CPU device of the CUDA build: does it reproduce
# the CPU wheel's results?), archive.
set -uo pipefail
source "$(dirname "$0")/device-common.sh"
D=${LOCKSTEP_DEVICE_DIR:-.device}
L=$D/bin/lockstep
M=/tmp/mlx-cuda
PACK=$(ls .device-mlx/mlx-cuda-*.tar.xz | head -1)
if [ ! -f $M/mlx/lib/libmlx.so ]; then
  mkdir -p $M && tar xJf "$PACK" -C $M
fi
NV=$(python3 -c "import nvidia; print(list(nvidia.__path__)[0])")
ln -sfn "$NV" $M/nvidia
export LD_LIBRARY_PATH=$M/mlx/lib$(printf ':%s' "$NV"/*/lib)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
[ -d /usr/local/cuda/include ] && export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export LOCKSTEP_REQUIRE_MLX_GPU=1
# MLX's Python front end unpacked beside the CUDA libmlx (its core module
# finds libmlx through RUNPATH $ORIGIN/lib), mlx-lm and what of its
# requirements the machine's Python lacks, in folders on PYTHONPATH.
PYD=/tmp/mlx-py
py_setup() {
  [ -f $PYD/.done ] && return 0
  mkdir -p $PYD
  python3 -m zipfile -e .device-mlx/wheels/mlx-0.32.2-*.whl $M || return 1
  python3 -m zipfile -e .device-mlx/wheels/mlx_lm-*.whl $PYD || return 1
  python3 -c "import sentencepiece" 2>/dev/null || python3 -m zipfile -e .device-mlx/wheels/sentencepiece-*.whl $PYD
  python3 -c "import google.protobuf" 2>/dev/null || python3 -m zipfile -e .device-mlx/wheels/protobuf-*.whl $PYD
  touch $PYD/.done
}
MLX_PY="env PYTHONPATH=$M:$PYD${PYTHONPATH:+:$PYTHONPATH} python3"
# lockstep bench's prompt (bench_prompt) for the Qwen3 vocabulary.
BENCH_IDS=$(python3 -c "print(','.join(str((1 + i * 7919) % 151936) for i in range(16)))")
echo "libmlx: $PACK; nvidia: $NV" | tee -a "$OUT/log.txt"
for stage in "$@"; do
  case $stage in
    env)
      step $L env --json ;;
    goldens)
      step $L golden regen --backend mlx-gpu --root .
      mkdir -p "$OUT/golden" && cp golden/*__mlx-gpu__*.snap "$OUT/golden/" ;;
    tests)
      step $D/tests/accelerators --test-threads 1 --nocapture mlx_gpu::
      step $D/tests/mlx_backend --test-threads 1 --nocapture mlx_gpu_ ;;
    cuda-tests)
      # The CUDA tests of this (MLX-linked) bundle need the same library
      # path, so they run here rather than through ci/device-cuda.sh.
      # CUDA_TESTS (test-name filters) runs only those of the shared suite.
      if [ -n "${CUDA_TESTS:-}" ]; then
        LOCKSTEP_REQUIRE_GPU=1 step $D/tests/accelerators --test-threads 1 --nocapture $CUDA_TESTS
      else
        LOCKSTEP_REQUIRE_GPU=1 step $D/tests/accelerators --test-threads 1 --nocapture cuda::
        LOCKSTEP_REQUIRE_GPU=1 step $D/tests/cuda_backend --test-threads 1 --nocapture
      fi ;;
    verify)
      # VERIFY_FILTER: space-separated filters, any of which selects a row.
      fargs=()
      for f in ${VERIFY_FILTER:-@mlx-gpu}; do fargs+=(--filter "$f"); done
      step $L verify --root . "${fargs[@]}" ;;
    envelopes)
      for preset in ${ENV_PRESETS:-tiny qwen3-0.6b}; do
        for path in graph fused; do
          for kind in ${ENV_KINDS:-op greedy}; do
            if [ $kind = op ]; then args="--steps 0 --level op --runs 100"; else args="--steps 256 --runs 20"; fi
            name=${ENV_NAME:-mlx-gpu}-$preset-$kind-$path
            echo "== envelope $name" | tee -a "$OUT/log.txt"
            timeout ${ENV_TIMEOUT:-240} $L envelope ${ENV_TARGET:---backend mlx --device gpu} --model synth:$preset --path $path $args \
              --json > "$OUT/envelope-$name.json" 2>>"$OUT/log.txt" || { echo "envelope $name failed" | tee -a "$OUT/log.txt"; rc=1; }
            python3 - "$OUT/envelope-$name.json" <<'PY' | tee -a "$OUT/log.txt"
import json, sys
try:
    e = json.load(open(sys.argv[1]))
except Exception as x:
    print("  (no JSON:", x, ")"); sys.exit()
fd = e.get("first_divergence")
div = [d for d in (fd or []) if d is not None]
print(f"  {e['case']}: {e['runs']} runs, {e['distinct']} distinct, pairwise RMS max {e['pairwise_rms']['max']:.3e}, "
      f"ULP buckets {e['ulp']['buckets']}" + (f", {len(div)} of {len(fd)} diverge, steps {sorted(div)}" if fd is not None else ""))
PY
          done
        done
      done ;;
    bench)
      # MLX's decode (graph, the compiled chain, lockstep's kernel; each
      # pipelined and not), the CUDA backend's, mlx-lm's and transformers',
      # on the same weights in the same GPU run.
      py_setup || { echo "python setup failed" | tee -a "$OUT/log.txt"; rc=1; }
      for preset in ${BENCH_PRESETS:-qwen3-0.6b qwen3-8b}; do
        step $L bench --backend mlx-gpu --model synth:$preset --mlx-pipeline on,off --repeats ${MLX_REPEATS:-5} \
          --out "$OUT/bench-mlx-$preset.json"
        step $L bench --backend cuda --model synth:$preset --modes deterministic --out "$OUT/bench-cuda-$preset.json"
        dir=/tmp/lockstep-$preset
        [ -d $dir ] || step $L synth --preset $preset --out $dir
        step timeout ${LM_TIMEOUT:-300} $MLX_PY ci/bench_mlx_lm.py $dir "$OUT/mlx-lm-$preset.json"
        [ -n "${NO_HF:-}" ] || step timeout ${HF_TIMEOUT:-300} python3 ci/bench_transformers.py $dir "$OUT/transformers-$preset.json"
        rm -rf $dir
      done
      python3 ci/bench_summary.py "$OUT" ${BENCH_PRESETS:-qwen3-0.6b qwen3-8b} | tee -a "$OUT/log.txt" ;;
    big)
      LOCKSTEP_BIG_MODELS=${BIG_MODELS:-synth:qwen3-8b,synth:qwen3-30b-a3b} \
        step $D/tests/mlx_backend --ignored --test-threads 1 --nocapture mlx_gpu_large_models ;;
    containment)
      # Fused inside graph's envelope, per CONTAIN_TARGET (CUDA's fast
      # mode by default), op level N=100 and greedy N=20 x 256.
      for preset in ${CONTAIN_PRESETS:-qwen3-0.6b}; do
        for kind in op greedy; do
          if [ $kind = op ]; then args="--steps 0 --level op --runs 100"; else args="--steps 256 --runs 20"; fi
          step timeout ${ENV_TIMEOUT:-240} $L envelope ${CONTAIN_TARGET:---backend cuda --mode fast} --model synth:$preset \
            --containment $args --report "$OUT/containment-$preset-$kind"
        done
      done ;;
    bench-big)
      for preset in ${BIG_BENCH:-qwen3-30b-a3b}; do
        step $L bench --backend mlx-gpu --model synth:$preset --warmup 8 --tokens 64 --repeats 2 \
          --mlx-moe-routing ${BIG_MOE_ROUTING:-host,device} --out "$OUT/bench-mlx-$preset.json"
      done ;;
    dumps)
      # Worked examples of `compare --theirs`: lockstep's CUDA backend and
      # MLX's GPU (lockstep trace) and transformers in bfloat16 on the GPU
      # (ci/hf_dump.py), on DUMP_MODELS, brought back to be compared on the
      # build machine: one $OUT/dumps-MODEL.tgz each (run this stage
      # without `archive`, which would pack them into one file). A synthetic
      # model keeps layers DUMP_LAYERS and four tokens (its logits rows are
      # 151936 wide).
      for spec in ${DUMP_MODELS:-tests/checkpoints/dense-hd80-gqa4-tied tests/checkpoints/moe-no-renorm-sparse2 synth:qwen3-0.6b}; do
        name=$(basename "${spec#synth:}")
        dir=$spec; lay=(); ids=1,5,9,17,33,65,129,257
        case $spec in synth:*)
          dir=/tmp/lockstep-$name; [ -d $dir ] || step $L synth --preset $name --out $dir
          lay=(--layers ${DUMP_LAYERS:-0,27}); ids=1,5,9,17 ;;
        esac
        hash=$($L info --model $dir --json | python3 -c "import json,sys; print(json.load(sys.stdin)['model_hash'])")
        d=/tmp/dumps-$name; rm -rf $d; mkdir -p $d
        step $L trace --model $dir --prompt-ids $ids --backend cuda "${lay[@]}" --path fused --out $d/cuda-fused
        step $L trace --model $dir --prompt-ids $ids --backend cuda "${lay[@]}" --out $d/cuda-graph
        step $L trace --model $dir --prompt-ids $ids --backend mlx --device gpu "${lay[@]}" --path fused --out $d/mlx-gpu-fused
        step timeout 300 python3 ci/hf_dump.py --model $dir --model-hash $hash --tokens $ids --dtype bfloat16 \
          "${lay[@]}" --out $d/transformers-bf16
        tar czf "$OUT/dumps-$name.tgz" -C /tmp "dumps-$name"
      done
      ls -la "$OUT" ;;
    bench-big-cuda)
      # The CUDA backend on BIG_BENCH, as bench-big times MLX.
      for preset in ${BIG_BENCH:-qwen3-30b-a3b}; do
        step timeout ${CUDA_BIG_TIMEOUT:-300} $L bench --backend cuda --model synth:$preset --modes deterministic \
          --warmup 8 --tokens 64 --repeats 2 --out "$OUT/bench-cuda-$preset.json"
      done ;;
    kernels)
      # Kernels per decode step and their GPU time: a greedy run of S+2
      # steps less one of S, under Nsight Compute (each kernel timed alone).
      NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
      for path in graph fused; do
        for n in 2 4; do
          step timeout 240 "$NCU" --clock-control none --metrics gpu__time_duration.sum --csv --page raw \
            --log-file "$OUT/ncu-qwen3-0.6b-$path-$n.csv" \
            $L generate --backend mlx-gpu --model synth:qwen3-0.6b --path $path --max-tokens $n --prompt-ids $BENCH_IDS
        done
      done
      python3 ci/ncu_steps.py "$OUT" qwen3-0.6b graph fused --json "$OUT/kernels-qwen3-0.6b.json" | tee -a "$OUT/log.txt" ;;
    cpu-tests)
      LOCKSTEP_REQUIRE_MLX=1 step $D/tests/accelerators --test-threads 1 --nocapture mlx:: ;;
    archive)
      archive_results ;;
    *) echo "unknown stage $stage"; rc=1 ;;
  esac
done
exit $rc
