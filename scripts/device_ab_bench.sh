#!/usr/bin/env bash
# Device: A/B decode bench on one machine. Plugins in dist/base (an older build) against the
# ones beside dist/gptoss (this build), alternating, for each backend in $BACKENDS; then
# optional GPU tests ($TESTS=1: both CUDA flavours of dist/cuda-mxfp4-fixtures). Carry dist.
set -uo pipefail
OUT=${OUT:-/tmp/gptoss-out}
mkdir -p "$OUT"
export XDG_CACHE_HOME=${XDG_CACHE_HOME:-/tmp/gptoss-cache}
G=./dist/gptoss
if [ -n "${TESTS:-}" ]; then bash "$(dirname "$0")/device_cuda_tests.sh"; fi
for b in ${BACKENDS:-cuda-mxfp4}; do
  for round in 1 2; do
    for side in base new; do
      if [ $side = base ]; then export GPTOSS_PLUGIN_PATH=$PWD/dist/base; else unset GPTOSS_PLUGIN_PATH; fi
      r=$(timeout 200 $G bench --backend $b --synthetic ${MODEL:-20b} --prompt 512 --gen ${GEN:-64} 2>&1 | tail -1)
      echo "$b $side round $round: $r"
    done
  done
done
unset GPTOSS_PLUGIN_PATH
