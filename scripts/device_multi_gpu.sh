#!/usr/bin/env bash
# Run on a machine with two or more GPUs (device kind nvidia-h100-x2) from the repo root, with
# dist/ staged here first: scripts/cuda_mxfp4_device_tests.sh (the test binary) and
# `cargo build --release -p gptoss-cli -p gptoss-backend-cuda-mxfp4 -p gptoss-backend-cuda-bf16`
# with target/release/{gptoss,*.so} copied (stripped) into dist/. Results go to $OUT.
# NVLink multicast stays off (the machine's rule): NCCL_NVLS_ENABLE=0.
set -uo pipefail
OUT=${OUT:-/tmp/gptoss-out}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 XDG_CACHE_HOME=${XDG_CACHE_HOME:-/tmp/gptoss-cache}
# NCCL from PyTorch's wheel when the system has none on the loader path.
if [ -z "${GPTOSS_NCCL:-}" ] && ! ldconfig -p | grep -q libnccl.so.2; then
  GPTOSS_NCCL=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib", "libnccl.so.2"))' 2>/dev/null)
  export GPTOSS_NCCL
fi
echo "GPTOSS_NCCL=${GPTOSS_NCCL:-<system>}" | tee "$OUT/nccl.txt"
G=./dist/gptoss
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
nvidia-smi topo -m > "$OUT/topo.txt" 2>&1

# 1. Fixtures split over two GPUs (tensor and expert parallel), both CUDA plugins' code.
GPTOSS_FIXTURES=tests/fixtures ./dist/cuda-mxfp4-fixtures --ignored split_ --test-threads=1 --nocapture \
  > "$OUT/split-mxfp4.txt" 2>&1; echo "split tests cuda-mxfp4: rc $?" | tee -a "$OUT/summary.txt"
GPTOSS_CUDA_FLAVOR=portable GPTOSS_FIXTURES=tests/fixtures ./dist/cuda-mxfp4-fixtures --ignored split_ \
  --test-threads=1 --nocapture > "$OUT/split-bf16.txt" 2>&1; echo "split tests cuda-bf16: rc $?" | tee -a "$OUT/summary.txt"

# 2. The plugin path (options over the C ABI): logits of a split model equal the unsplit ones.
for fx in tiny-a tiny-b; do
  for tp in "1" "2" "2 --expert-parallel"; do
    $G logits --backend cuda-mxfp4 -m tests/fixtures/$fx --tensor-parallel $tp --tokens 1,5,9,200,7,3,100,42 \
      --out "$OUT/logits-$fx-tp${tp// /}.safetensors" 2>&1 | tail -1 | tee -a "$OUT/summary.txt"
  done
done

python3 - "$OUT" <<'PY' 2>&1 | tee -a "$OUT/summary.txt"
import sys, glob, os
from safetensors.numpy import load_file
out = sys.argv[1]
for fx in ("tiny-a", "tiny-b"):
    one = next(iter(load_file(f"{out}/logits-{fx}-tp1.safetensors").values()))
    for tag in ("tp2", "tp2--expert-parallel"):
        p = f"{out}/logits-{fx}-{tag}.safetensors"
        if not os.path.exists(p):
            print(f"{fx} {tag}: missing"); continue
        x = next(iter(load_file(p).values()))
        print(f"{fx} {tag} vs tp1: max abs diff {abs(x - one).max():.3e}, argmax equal {bool((x.argmax(-1) == one.argmax(-1)).all())}")
PY

# 3. Speed: decode at batch 1 and with many sequences per step, TP=1 and 2 (and EP=2).
for preset in ${PRESETS:-20b 120b}; do
  for tp in ${SPLITS:-"1" "2" "2 --expert-parallel"}; do
    timeout 280 $G bench --backend cuda-mxfp4 --synthetic $preset --tensor-parallel $tp --prompt 512 \
      --gen ${GEN:-128} --batch ${BATCHES:-1} 2>&1 | grep -v '^loading\|^building' | tee -a "$OUT/bench.txt"
  done
done
