#!/usr/bin/env bash
# Device: where a batch-1 decode step's time goes. Baseline bench, then Nsight Compute's
# per-kernel GPU time (gpu__time_duration) over a short run, as CSV under $OUT, so the sum of
# kernel times per step can be set against the measured ms/token (the rest is gaps and host).
set -uo pipefail
OUT=${OUT:-/tmp/gptoss-out}
mkdir -p "$OUT"
export XDG_CACHE_HOME=${XDG_CACHE_HOME:-/tmp/gptoss-cache}
G=./dist/gptoss
B=${BACKEND:-cuda-mxfp4}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
timeout 200 $G bench --backend $B --synthetic ${PRESET:-20b} --prompt 512 --gen 64 2>&1 | tee "$OUT/bench.txt"
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
timeout ${NCU_TIMEOUT:-300} $NCU --clock-control none --cache-control none \
  --metrics gpu__time_duration.sum,launch__grid_size,launch__block_size,dram__bytes_read.sum \
  --csv --page raw --print-units base \
  $G bench --backend $B --synthetic ${PRESET:-20b} --prompt 128 --gen 6 > "$OUT/ncu.csv" 2> "$OUT/ncu.err"
echo "ncu rc=$? rows=$(wc -l < "$OUT/ncu.csv")"
tail -5 "$OUT/ncu.err"
