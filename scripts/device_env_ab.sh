#!/usr/bin/env bash
# Device: the GPU tests of both flavours (TESTS=0 skips them; FILTER narrows them), then the
# 20b bench once a setting: each word of AB is environment assignments joined by commas (or "base") run
# against the same build on one machine, for prefill (PROMPTS) and batched decode (BATCHES).
set -uo pipefail
OUT=${OUT:-/tmp/gptoss-out}
mkdir -p "$OUT"
export XDG_CACHE_HOME=${XDG_CACHE_HOME:-/tmp/gptoss-cache}
G=./dist/gptoss
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
if [ "${TESTS:-1}" = 1 ]; then
  for flavor in mxfp4 portable; do
    GPTOSS_CUDA_FLAVOR=$flavor GPTOSS_FIXTURES=tests/fixtures timeout 400 ./dist/cuda-mxfp4-fixtures \
      --include-ignored --skip split_ --test-threads=1 --nocapture ${FILTER:-} > "$OUT/tests-$flavor.txt" 2>&1
    echo "tests $flavor rc=$?: $(grep -E 'test result' "$OUT/tests-$flavor.txt")"
    grep -E "FAILED|panicked|did not compile|error" "$OUT/tests-$flavor.txt" | head -8
  done
fi
for setting in ${AB:-base}; do
  echo "== $setting"
  env $( [ "$setting" = base ] || echo "${setting//,/ }" ) $G bench --backend ${BACKEND:-cuda-mxfp4} --synthetic ${PRESET:-20b} \
    --prompt ${PROMPTS:-512,2048} --gen ${GEN:-8} 2>&1 | tail -n +3
  [ -n "${BATCHES:-}" ] && env $( [ "$setting" = base ] || echo "${setting//,/ }" ) $G bench --backend ${BACKEND:-cuda-mxfp4} \
    --synthetic ${PRESET:-20b} --prompt 128 --gen 32 --batch $BATCHES 2>&1 | tail -n +4
done
