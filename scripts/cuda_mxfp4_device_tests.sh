#!/usr/bin/env bash
# Build the CUDA backend test binary (gptoss-cuda: both flavors) here (no cargo on the GPU machine) and stage it in dist/
# (git-ignored), then print the command to run on the GPU machine from the repo root, e.g.
# through the device tool with carry ["dist"].
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(cargo test -j2 -p gptoss-cuda --release --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "fixtures" and m.get("executable"):
        print(m["executable"])')
mkdir -p dist
cp "$bin" dist/cuda-mxfp4-fixtures
strip dist/cuda-mxfp4-fixtures
echo "staged $bin as dist/cuda-mxfp4-fixtures; on the GPU machine run:"
echo 'set -o pipefail; GPTOSS_FIXTURES=tests/fixtures ./dist/cuda-mxfp4-fixtures --include-ignored --skip split_ --test-threads=1 --nocapture 2>&1 | tee $OUT/log.txt'
echo 'on a machine with two GPUs (nvidia-h100-x2), the split tests: ./dist/cuda-mxfp4-fixtures --ignored split_ --test-threads=1 --nocapture'
echo 'the portable (cuda-bf16) flavor, as compute_80 code: prefix GPTOSS_CUDA_FLAVOR=portable'
