#!/usr/bin/env bash
# Build the cuda-mxfp4 test binary here (no cargo on the GPU machine) and stage it in dist/
# (git-ignored), then print the command to run on the GPU machine from the repo root, e.g.
# through the device tool with carry ["dist"].
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(cargo test -j2 -p gptoss-backend-cuda-mxfp4 --release --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "fixtures" and m.get("executable"):
        print(m["executable"])')
mkdir -p dist
cp "$bin" dist/cuda-mxfp4-fixtures
strip dist/cuda-mxfp4-fixtures
echo "staged $bin as dist/cuda-mxfp4-fixtures; on the GPU machine run:"
echo 'set -o pipefail; GPTOSS_FIXTURES=tests/fixtures ./dist/cuda-mxfp4-fixtures --include-ignored --test-threads=1 --nocapture 2>&1 | tee $OUT/log.txt'
