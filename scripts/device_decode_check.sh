#!/usr/bin/env bash
# Device: GPU fixture tests of both CUDA flavors, then the decode benches (20b for each MoE
# row variant, 120b, and the cuda-bf16 plugin). Results under $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/gptoss-out}
mkdir -p "$OUT"
export XDG_CACHE_HOME=${XDG_CACHE_HOME:-/tmp/gptoss-cache}
G=./dist/gptoss
bash "$(dirname "$0")/device_cuda_tests.sh"
for rows in ${ROWS:-2 4}; do
  echo "20b, GPTOSS_CUDA_MOE_ROWS=$rows"
  GPTOSS_CUDA_MOE_ROWS=$rows timeout 200 $G bench --backend cuda-mxfp4 --synthetic 20b --prompt 512 --gen 64 2>&1 | tail -1
done
[ -n "${BIG:-1}" ] && timeout 300 $G bench --backend cuda-mxfp4 --synthetic 120b --prompt 512 --gen 64 2>&1 | tail -2
[ -n "${BF16:-1}" ] && timeout 200 $G bench --backend cuda-bf16 --synthetic 20b --prompt 512 --gen 64 2>&1 | tail -2
