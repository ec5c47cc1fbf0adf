set -uo pipefail
export XDG_CACHE_HOME=/tmp/gptoss-cache
G=./dist/gptoss
T=1,17,300,4000,52000,199000,42,7,1000,123456,5,99,2024,31337,8,200000
$G synth --preset 20b --layers 3 --out /tmp/s20b-cut > /dev/null 2>&1
$G logits -m /tmp/s20b-cut --backend cpu --tokens $T --out /tmp/full-cpu.safetensors > /dev/null 2>&1
for s in base GPTOSS_CUDA_NO_SKINNY=1 GPTOSS_CUDA_ATTN_F32=1 GPTOSS_CUDA_CUBLAS_LINEAR_MAX_T=0 GPTOSS_CUDA_MMA_MIN_T=64; do
  env $([ $s = base ] || echo $s) $G logits -m /tmp/s20b-cut --backend cuda-mxfp4 --tokens $T --out /tmp/full-gpu.safetensors > /dev/null 2>&1
  python3 - "$s" <<'PY'
import sys, numpy as np
from safetensors.numpy import load_file
a = load_file("/tmp/full-cpu.safetensors")["logits"]; b = load_file("/tmp/full-gpu.safetensors")["logits"]
d = np.abs(a - b)
print(f"{sys.argv[1]}: max abs diff {d.max():.3e} (max |logit| {np.abs(a).max():.3f}), per-row max {np.round(d.max(1),3).tolist()}, argmax equal {int((a.argmax(1)==b.argmax(1)).sum())}/16")
PY
done
