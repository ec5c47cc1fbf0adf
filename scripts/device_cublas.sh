#!/usr/bin/env bash
# --dequantize through cuBLAS (issue 7) on the GPU machine, from the repo root. dist/ holds
# (built on the dev machine, git-ignored):
#   dist/cuda-fixtures  the gptoss-cuda test binary: cargo test --release -p gptoss-cuda --no-run
#   dist/gptoss + dist/*.so  cargo build --release -p gptoss-cli -p gptoss-backend-cpu
#                        -p gptoss-backend-cuda-mxfp4 -p gptoss-backend-cuda-bf16
# Runs the cuBLAS and dequantized GPU tests on both flavours, then the 20b prefill/decode bench
# with --dequantize through cuBLAS and through the own kernels (GPTOSS_CUDA_NO_CUBLAS=1), on the
# same machine one after the other, one-sequence and batched. Results go to $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/gptoss-out}
mkdir -p "$OUT"
export XDG_CACHE_HOME=${XDG_CACHE_HOME:-/tmp/gptoss-cache}
export GPTOSS_FIXTURES=tests/fixtures
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
ls /usr/lib/x86_64-linux-gnu/libcublas* /usr/local/cuda*/lib64/libcublas* 2>/dev/null | tee "$OUT/cublas-libs.txt"
TESTS="op_linear_cublas_matches_cpu op_moe_dequantized_cublas_matches_cpu
  op_moe_dequantized_matches_cpu fixtures_dequantized_match_transformers
  op_linear_large_t_tensor_cores_match_cpu op_moe_large_t_grouped_matches_cpu"
status=0
for flavor in mxfp4 portable; do
  f=""
  [ "$flavor" = portable ] && f=GPTOSS_CUDA_FLAVOR=portable
  env $f ./dist/cuda-fixtures --ignored --exact $TESTS --test-threads=1 --nocapture \
    2>&1 | tee "$OUT/tests-$flavor.txt" || status=1
done
for off in 0 1; do
  GPTOSS_CUDA_NO_CUBLAS=$off timeout 400 ./dist/gptoss bench --backend cuda-bf16 \
    --synthetic 20b --prompt ${PROMPTS:-512,2048} --gen ${GEN:-16} --dequantize \
    2>&1 | tee "$OUT/bench-20b-dequantize-no-cublas-$off.txt" || status=1
  # Batched decode steps of >= 16 sequences take cuBLAS too (and, for the MoE's host read, run
  # without CUDA graphs): is that a win there as well?
  GPTOSS_CUDA_NO_CUBLAS=$off timeout 400 ./dist/gptoss bench --backend cuda-bf16 \
    --synthetic 20b --prompt 128 --gen 16 --batch 16,64 --dequantize \
    2>&1 | tee "$OUT/bench-20b-dequantize-batched-no-cublas-$off.txt" || status=1
done
exit $status
