#!/usr/bin/env bash
# f16 tensor cores for Turing and Volta (issue 7) on the GPU machine, from the repo root. dist/
# holds (built on the dev machine, git-ignored):
#   dist/cuda-fixtures  the gptoss-cuda test binary: cargo test --release -p gptoss-cuda --no-run
#   dist/gptoss + dist/*.so  cargo build --release -p gptoss-cli -p gptoss-backend-cpu
#                        -p gptoss-backend-cuda-mxfp4 -p gptoss-backend-cuda-bf16
# PART=tests: the tensor-core GPU tests with the portable flavor as compute_75 (the f16 build:
# Turing's PTX, JIT-compiled for this GPU), as compute_70 (the Volta f16 build: mma m8n8k4), as
# compute_80 (bf16, regression) and with the cuda-mxfp4 flavor (regression). PART=bench: 20b
# prefill as compute_75 with the f16 tensor cores, as compute_75 on the f32 kernels
# (GPTOSS_CUDA_MMA_MIN_T=0: what sm_75 ran before) and as compute_80 (bf16), one after the other
# on this machine; PART=bench70: the same for compute_70 (f16 m8n8k4, then f32). PART=compute_75,
# compute_70, compute_80 or mxfp4: one test run only (each fits one 600 s device call).
# Default: all. Results go to $OUT.
# compute_70 needs NVRTC 12 (CUDA 13's NVRTC refuses targets before sm_75): when
# $DIST/nvrtc12.tar.xz is there (nvrtc12/libnvrtc.so.12 + libnvrtc-builtins.so.12.9 from pip's
# nvidia-cuda-nvrtc-cu12 wheel, tar -cJf) it is unpacked to /tmp and named by GPTOSS_NVRTC for
# the compute_70 runs; otherwise NVRTC12=/path/to/libnvrtc.so.12 may name one.
set -uo pipefail
OUT=${OUT:-/tmp/gptoss-out}
PART=${PART:-all}
DIST=${DIST:-dist}  # another folder of the same files, e.g. DIST=dist-f16 beside the lead's dist/
mkdir -p "$OUT"
export XDG_CACHE_HOME=${XDG_CACHE_HOME:-/tmp/gptoss-cache}
export GPTOSS_FIXTURES=tests/fixtures
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
TESTS="tensor_core_family_matches_the_target dequantize_is_refused_without_bf16_tensor_cores
  op_linear_large_t_tensor_cores_match_cpu op_moe_large_t_grouped_matches_cpu
  op_moe_large_t_extreme_scales_match_cpu fixtures_with_bf16_paths_forced_match_transformers
  op_attention_large_t_tiled_matches_cpu fixtures_prefill_matches_transformers
  batched_paged_steps_match_transformers kernels_are_cached_on_disk"
# The bf16 builds also run the bf16-row (--dequantize) MoE, whose kernel body changed too.
BF16_TESTS="op_moe_dequantized_matches_cpu"
status=0
run_tests() { # name, env..., -- tests
  local name=$1; shift
  local envs=()
  while [ "$1" != "--" ]; do envs+=("$1"); shift; done; shift
  env "${envs[@]}" timeout 300 "$DIST/cuda-fixtures" --ignored --exact "$@" --test-threads=1 \
    --nocapture 2>&1 | tee "$OUT/tests-$name.txt"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
  grep -E "^test result|FAILED|panicked" "$OUT/tests-$name.txt" | tee -a "$OUT/summary.txt"
}
NVRTC12=${NVRTC12:-}
if [ -z "$NVRTC12" ] && [ -f "$DIST/nvrtc12.tar.xz" ]; then
  tar -xJf "$DIST/nvrtc12.tar.xz" -C /tmp && NVRTC12=/tmp/nvrtc12/libnvrtc.so.12
fi
NVRTC70=()
[ -n "$NVRTC12" ] && NVRTC70=("GPTOSS_NVRTC=$NVRTC12")
part() { [ "$PART" = all ] || [ "$PART" = "$1" ] || { [ "$PART" = tests ] && [ "$2" = test ]; }; }
if part compute_75 test; then
  run_tests compute_75 GPTOSS_CUDA_FLAVOR=portable GPTOSS_CUDA_PORTABLE_ARCH=compute_75 -- $TESTS
fi
if part compute_70 test; then
  run_tests compute_70 GPTOSS_CUDA_FLAVOR=portable GPTOSS_CUDA_PORTABLE_ARCH=compute_70 \
    ${NVRTC70[@]+"${NVRTC70[@]}"} -- $TESTS
fi
if part compute_80 test; then
  run_tests compute_80 GPTOSS_CUDA_FLAVOR=portable GPTOSS_CUDA_PORTABLE_ARCH=compute_80 -- \
    $TESTS $BF16_TESTS
fi
if part mxfp4 test; then
  run_tests mxfp4 GPTOSS_CUDA_FLAVOR=mxfp4 -- $TESTS $BF16_TESTS
fi
bench() { # name, env...
  local name=$1; shift
  env "$@" timeout 240 "$DIST/gptoss" bench --backend cuda-bf16 --synthetic 20b \
    --prompt ${PROMPTS:-512,2048} --gen ${GEN:-8} 2>&1 | tee "$OUT/bench-$name.txt"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
}
if part bench bench; then
  bench compute_75-f16 GPTOSS_CUDA_PORTABLE_ARCH=compute_75
  bench compute_75-f32 GPTOSS_CUDA_PORTABLE_ARCH=compute_75 GPTOSS_CUDA_MMA_MIN_T=0
  bench compute_80-bf16 GPTOSS_CUDA_PORTABLE_ARCH=compute_80
fi
if part bench70 bench; then
  bench compute_70-f16 GPTOSS_CUDA_PORTABLE_ARCH=compute_70 ${NVRTC70[@]+"${NVRTC70[@]}"}
  bench compute_70-f32 GPTOSS_CUDA_PORTABLE_ARCH=compute_70 GPTOSS_CUDA_MMA_MIN_T=0 ${NVRTC70[@]+"${NVRTC70[@]}"}
fi
exit $status
