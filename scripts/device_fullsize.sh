#!/usr/bin/env bash
# On the GPU machine, from the repo root, with dist/ as for device_bench.sh:
# 1. full-size agreement: a synthetic 20b-shaped checkpoint cut to a few layers, logits on the
#    cpu backend vs cuda-mxfp4;
# 2. loading the full synthetic 20b checkpoint from page cache, timed by `gptoss bench --model`.
set -uo pipefail
OUT=${OUT:-/tmp/gptoss-out}
mkdir -p "$OUT"
export XDG_CACHE_HOME=${XDG_CACHE_HOME:-/tmp/gptoss-cache}
G=./dist/gptoss
AB=base bash scripts/device_fullsize_isolate.sh | tee "$OUT/fullsize.txt"
$G synth --preset 20b --out /tmp/s20b
cat /tmp/s20b/*.safetensors > /dev/null   # into the page cache
du -sh /tmp/s20b | tee -a "$OUT/fullsize.txt"
timeout 300 $G bench -m /tmp/s20b --backend cuda-mxfp4 --prompt 512 --gen 32 2>&1 | tee -a "$OUT/fullsize.txt"
