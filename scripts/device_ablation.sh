#!/usr/bin/env bash
# Device: what each kernel costs inside the captured decode step. The 20b bench once as it is,
# then once a set of kernels left out (GPTOSS_CUDA_TIMING_SKIP: their results are wrong, the
# step's time without them is the point); the difference in ms/token is the set's share of the
# step, overlaps with its neighbours included (Nsight Compute's times are each kernel alone).
set -uo pipefail
export XDG_CACHE_HOME=${XDG_CACHE_HOME:-/tmp/gptoss-cache}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
b() {
  env "$@" ./dist/gptoss bench --backend cuda-mxfp4 --synthetic ${PRESET:-20b} --prompt ${PROMPT:-512} \
    --gen ${GEN:-128} 2>&1 | tail -1 | awk '{print $5 " tok/s, " $6 " ms/token"}'
}
echo "all kernels: $(b X=1)"
for s in ${SETS:-attention_split,attention_merge attention_merge add_norm_router_spread moe_t1_gate_up moe_t1_down gemv_bf16_t1 gemv_bf16_t1_moe}; do
  echo "without $s: $(b GPTOSS_CUDA_TIMING_SKIP=$s)"
done
echo "all kernels: $(b X=1)"
