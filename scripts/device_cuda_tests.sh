#!/usr/bin/env bash
# Device: the GPU tests of both CUDA flavours (dist/cuda-mxfp4-fixtures, staged by
# scripts/cuda_mxfp4_device_tests.sh; the split tests need two GPUs and are skipped). One line
# a flavour, the failures after it; logs in $OUT/tests-<flavour>.txt.
set -uo pipefail
OUT=${OUT:-/tmp/gptoss-out}
mkdir -p "$OUT"
export XDG_CACHE_HOME=${XDG_CACHE_HOME:-/tmp/gptoss-cache}
for flavor in mxfp4 portable; do
  GPTOSS_CUDA_FLAVOR=$flavor GPTOSS_FIXTURES=tests/fixtures timeout 300 ./dist/cuda-mxfp4-fixtures \
    --include-ignored --skip split_ --test-threads=1 --nocapture > "$OUT/tests-$flavor.txt" 2>&1
  echo "tests $flavor rc=$?: $(grep -E 'test result' "$OUT/tests-$flavor.txt")"
  grep -E "FAILED|panicked|did not compile" "$OUT/tests-$flavor.txt" | head -5
done
