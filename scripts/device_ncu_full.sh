#!/usr/bin/env bash
# Device: Nsight Compute full sections for one launch of each named kernel in a 20b decode.
set -uo pipefail
OUT=${OUT:-/tmp/gptoss-out}; mkdir -p "$OUT"
export XDG_CACHE_HOME=${XDG_CACHE_HOME:-/tmp/gptoss-cache}
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
./dist/gptoss bench --backend cuda-mxfp4 --synthetic 20b --prompt 128 --gen 4 > /dev/null 2>&1
for k in ${KERNELS:-moe_t1_gate_up}; do
  timeout 240 $NCU --clock-control none --set full -k regex:"^$k\$" --launch-skip ${SKIP:-30} --launch-count 1 \
    ./dist/gptoss bench --backend cuda-mxfp4 --synthetic 20b --prompt 128 --gen 4 > "$OUT/ncu-$k.txt" 2>&1
  echo "$k rc=$? lines=$(wc -l < "$OUT/ncu-$k.txt")"
done
