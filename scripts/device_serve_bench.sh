#!/usr/bin/env bash
# Run on the GPU machine from the repo root with dist/ staged (release gptoss + plugin .so
# files): writes a synthetic gpt-oss-20b checkpoint, serves it on cuda-mxfp4 and measures
# total throughput at several concurrency levels (scripts/serve_throughput.py). Results in $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/gptoss-out}
mkdir -p "$OUT"
export XDG_CACHE_HOME=${XDG_CACHE_HOME:-/tmp/gptoss-cache}
G=./dist/gptoss
M=${MODEL_DIR:-/tmp/gptoss-synth-20b}
[ -f "$M/model.safetensors.index.json" ] || $G synth --preset 20b --out "$M" 2>&1 | tail -1
$G serve --model "$M" --backend cuda-mxfp4 --port 8011 --max-batch ${MAX_BATCH:-256} \
  --queue 1024 --prefill-chunk ${PREFILL_CHUNK:-256} --max-context 2048 --kv-cache-tokens ${KV_TOKENS:-500000} ${SERVE_FLAGS:-} \
  > "$OUT/serve.log" 2>&1 &
pid=$!
for _ in $(seq 1 120); do
  curl -sf http://127.0.0.1:8011/health > /dev/null && break
  sleep 1
done
python3 scripts/serve_throughput.py --url http://127.0.0.1:8011 \
  --concurrency ${LEVELS:-1,16,64,256} | tee "$OUT/serve_throughput.jsonl"
curl -s http://127.0.0.1:8011/metrics | grep -E "^gptoss_(kv|engine)" > "$OUT/metrics.txt"
kill -INT $pid; wait $pid
tail -5 "$OUT/serve.log"
