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
T=1,17,300,4000,52000,199000,42,7,1000,123456,5,99,2024,31337,8,200000
$G synth --preset 20b --layers ${LAYERS:-3} --out /tmp/s20b-cut
for b in cpu cuda-mxfp4; do
  $G logits -m /tmp/s20b-cut --backend $b --tokens $T --out /tmp/full-$b.safetensors
done
python3 - <<'PY' | tee "$OUT/fullsize.txt"
import numpy as np
from safetensors.numpy import load_file
a = load_file("/tmp/full-cpu.safetensors")["logits"]
b = load_file("/tmp/full-cuda-mxfp4.safetensors")["logits"]
d = np.abs(a - b)
print(f"shape {a.shape}; max |logit| {np.abs(a).max():.4f}; max abs diff {d.max():.3e}; "
      f"rel (max diff / max |logit|) {d.max() / np.abs(a).max():.3e}; "
      f"argmax equal at {int((a.argmax(1) == b.argmax(1)).sum())}/{a.shape[0]} positions")
PY
$G synth --preset 20b --out /tmp/s20b
cat /tmp/s20b/*.safetensors > /dev/null   # into the page cache
du -sh /tmp/s20b | tee -a "$OUT/fullsize.txt"
timeout 300 $G bench -m /tmp/s20b --backend cuda-mxfp4 --prompt 512 --gen 32 2>&1 | tee -a "$OUT/fullsize.txt"
