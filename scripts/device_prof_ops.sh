#!/usr/bin/env bash
# Device: where a 2048-token prefill and a 256-sequence batched decode step spend their time,
# per op and output shape (GPTOSS_CUDA_PROFILE=1's table, graphs off: small nodes include their
# launch gaps). Tables in $OUT/prof_prefill.txt and $OUT/prof_b256.txt; plain benches with
# scripts/device_env_ab.sh.
set -uo pipefail
OUT=${OUT:-/tmp/gptoss-out}
mkdir -p "$OUT"
export XDG_CACHE_HOME=${XDG_CACHE_HOME:-/tmp/gptoss-cache}
G=./dist/gptoss
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
GPTOSS_CUDA_PROFILE=1 $G bench --backend cuda-mxfp4 --synthetic 20b --prompt 2048 --gen 2 \
  > "$OUT/prefill_bench.txt" 2> "$OUT/prof_prefill.txt"
GPTOSS_CUDA_PROFILE=1 $G bench --backend cuda-mxfp4 --synthetic 20b --prompt 64 --gen 8 --batch 256 \
  > "$OUT/b256_bench.txt" 2> "$OUT/prof_b256.txt"
tail -n 3 "$OUT/prefill_bench.txt" "$OUT/b256_bench.txt"
head -n 12 "$OUT/prof_prefill.txt" "$OUT/prof_b256.txt"
