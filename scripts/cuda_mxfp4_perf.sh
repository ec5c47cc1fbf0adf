#!/usr/bin/env bash
# On the GPU machine from the repo root (dist/ staged by scripts/cuda_mxfp4_device_tests.sh and
# the release build): GPU fixture tests, then the 20b bench with per-node profiles for the
# simple kernels (GPTOSS_CUDA_NO_FUSION=1) and the fast ones, then the plain benches.
# Env: PROMPTS (default 512,2048), GEN (64), SKIP_BASE=1 skips the simple-kernel profile,
# SKIP_120=1 skips 120b. Logs go to $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/gptoss-out}
mkdir -p "$OUT"
export XDG_CACHE_HOME=${XDG_CACHE_HOME:-/tmp/gptoss-cache}
G=./dist/gptoss
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader
GPTOSS_FIXTURES=tests/fixtures timeout 240 ./dist/cuda-mxfp4-fixtures --include-ignored --test-threads=1 > "$OUT/tests.txt" 2>&1
echo "tests rc=$? $(grep -E '^test result' "$OUT/tests.txt")"
grep -E 'FAILED|panicked' "$OUT/tests.txt" | head -20
grep -E 'bf16 paths|bf16 operands' "$OUT/tests.txt" | head -20
# The exact f32 kernels (no fusion, no bf16 operands) on the transformers fixtures too.
GPTOSS_CUDA_NO_FUSION=1 GPTOSS_FIXTURES=tests/fixtures timeout 120 ./dist/cuda-mxfp4-fixtures --include-ignored --test-threads=1 fixtures_ > "$OUT/tests-nofusion.txt" 2>&1
echo "tests (GPTOSS_CUDA_NO_FUSION=1, fixtures) rc=$? $(grep -E '^test result' "$OUT/tests-nofusion.txt")"
if [ -z "${SKIP_BASE:-}" ]; then
  GPTOSS_CUDA_NO_FUSION=1 GPTOSS_CUDA_PROFILE=1 timeout 200 $G bench --backend cuda-mxfp4 --synthetic 20b --prompt 512 --gen 32 > "$OUT/prof-base.txt" 2>&1
  echo "== profile, simple kernels (20b, prompt 512, gen 32)"; head -30 "$OUT/prof-base.txt"; tail -8 "$OUT/prof-base.txt"
fi
GPTOSS_CUDA_PROFILE=1 timeout 200 $G bench --backend cuda-mxfp4 --synthetic 20b --prompt 512 --gen 32 > "$OUT/prof-fast.txt" 2>&1
echo "== profile, fast kernels (20b, prompt 512, gen 32)"; head -30 "$OUT/prof-fast.txt"; tail -8 "$OUT/prof-fast.txt"
timeout 240 $G bench --backend cuda-mxfp4 --synthetic 20b --prompt ${PROMPTS:-512,2048} --gen ${GEN:-64} > "$OUT/bench-20b.txt" 2>&1
echo "== bench 20b"; tail -8 "$OUT/bench-20b.txt"
if [ -z "${SKIP_120:-}" ]; then
  timeout 240 $G bench --backend cuda-mxfp4 --synthetic 120b --prompt 512 --gen ${GEN:-64} > "$OUT/bench-120b.txt" 2>&1
  echo "== bench 120b"; tail -8 "$OUT/bench-120b.txt"
fi
