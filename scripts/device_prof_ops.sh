set -uo pipefail
export XDG_CACHE_HOME=/tmp/gptoss-cache
G=./dist/gptoss
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
$G bench --backend cuda-mxfp4 --synthetic 20b --prompt 128 --gen 32 --batch 1,16,64,256 2>&1 | tail -12
GPTOSS_CUDA_PROFILE=1 $G bench --backend cuda-mxfp4 --synthetic 20b --prompt 2048 --gen 2 > $OUT/prefill_bench.txt 2> $OUT/prof_prefill.txt
GPTOSS_CUDA_PROFILE=1 $G bench --backend cuda-mxfp4 --synthetic 20b --prompt 64 --gen 8 --batch 256 > $OUT/b256_bench.txt 2> $OUT/prof_b256.txt
tail -3 $OUT/prefill_bench.txt $OUT/b256_bench.txt
