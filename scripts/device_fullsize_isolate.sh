#!/usr/bin/env bash
# Device: the full-size agreement check and where its difference comes from: logits of a
# synthetic 20b cut to LAYERS (3) layers on the cpu backend against cuda-mxfp4, once a setting
# of AB (an environment assignment, or "base"; default: each tensor-core path switched off in
# turn). scripts/device_fullsize.sh runs it with AB=base.
set -uo pipefail
export XDG_CACHE_HOME=${XDG_CACHE_HOME:-/tmp/gptoss-cache}
G=./dist/gptoss
# N tokens (default the 16 of device_fullsize.sh; 600 reaches the prefill MoE v2 path).
T=1,17,300,4000,52000,199000,42,7,1000,123456,5,99,2024,31337,8,200000
[ -n "${N:-}" ] && T=$(python3 -c "print(','.join(str((i * 7919 + 13) % 201088) for i in range($N)))")
$G synth --preset 20b --layers ${LAYERS:-3} --out /tmp/s20b-cut > /dev/null 2>&1
$G logits -m /tmp/s20b-cut --backend cpu --tokens $T --out /tmp/full-cpu.safetensors > /dev/null 2>&1
for s in ${AB:-base GPTOSS_CUDA_NO_SKINNY=1 GPTOSS_CUDA_ATTN_F32=1 GPTOSS_CUDA_CUBLAS_LINEAR_MAX_T=0 GPTOSS_CUDA_MMA_MIN_T=64}; do
  env $([ $s = base ] || echo $s) $G logits -m /tmp/s20b-cut --backend cuda-mxfp4 --tokens $T --out /tmp/full-gpu.safetensors > /dev/null 2>&1
  python3 - "$s" <<'PY'
import sys, numpy as np
from safetensors.numpy import load_file
a = load_file("/tmp/full-cpu.safetensors")["logits"]; b = load_file("/tmp/full-gpu.safetensors")["logits"]
d = np.abs(a - b)
r = d.max(1)
print(f"{sys.argv[1]}: max abs diff {d.max():.3e} (max |logit| {np.abs(a).max():.3f}), rows over 0.1: {int((r > 0.1).sum())} of {len(r)} (worst at {int(r.argmax())}), argmax equal {int((a.argmax(1)==b.argmax(1)).sum())}/{len(r)}")
PY
done
