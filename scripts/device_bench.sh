#!/usr/bin/env bash
# Run on the GPU machine from the repo root, with dist/ holding the release gptoss binary and
# plugin .so files (built here: cargo build --release -p gptoss-cli -p gptoss-backend-cpu
# -p gptoss-backend-cuda-mxfp4 -p gptoss-backend-cuda-bf16; cp target/release/{gptoss,*.so} dist/). Results go to $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/gptoss-out}
mkdir -p "$OUT"
export XDG_CACHE_HOME=${XDG_CACHE_HOME:-/tmp/gptoss-cache}
G=./dist/gptoss
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$G backends 2>&1 | tee "$OUT/backends.txt"
for fx in tiny-a tiny-b; do
  for b in cpu cuda-mxfp4; do
    $G logits --backend $b -m tests/fixtures/$fx --tokens 1,5,9,200,7,3,100,42,11,12,13,14 --out "$OUT/logits-$fx-$b.safetensors" 2>&1 | tail -1
  done
done
timeout 300 $G bench --backend cuda-mxfp4 --synthetic 20b --prompt ${PROMPTS:-512,2048} --gen ${GEN:-64} 2>&1 | tee "$OUT/bench-20b.txt"
timeout 300 $G bench --backend cuda-mxfp4 --synthetic 120b --prompt 512 --gen ${GEN:-64} 2>&1 | tee "$OUT/bench-120b.txt"
