#!/usr/bin/env bash
# Device: the wgpu backend on the H100 through NVIDIA's Vulkan driver (fixture tests, then
# bench against cuda-mxfp4 on the same machine), and cuda-bf16 --dequantize. Carry dist/ (release
# gptoss, plugins, dist/wgpu-fixtures) and the .gl/*.deb packages (the Vulkan loader and
# libglvnd, which NVIDIA's Vulkan ICD links against; see device/README.md). Results under $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/gptoss-out}
mkdir -p "$OUT"
export XDG_CACHE_HOME=${XDG_CACHE_HOME:-/tmp/gptoss-cache}
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$icd" ] && export VK_DRIVER_FILES=$icd
G=./dist/gptoss
$G backends 2>&1 | grep -i -E "wgpu|vulkan" | head -5
GPTOSS_FIXTURES=tests/fixtures timeout 150 ./dist/wgpu-fixtures --test-threads=1 > "$OUT/wgpu-tests.txt" 2>&1
echo "wgpu tests rc=$?: $(grep -E 'test result' "$OUT/wgpu-tests.txt")"
grep -E "FAILED|panicked" "$OUT/wgpu-tests.txt" | head -5
for b in cuda-mxfp4 wgpu; do
  echo "$b"
  timeout 150 $G bench --backend $b --synthetic 20b --prompt 512 --gen ${GEN:-32} 2>&1 | tail -2
done
if [ -n "${PROFILE:-}" ]; then
  # Per-dispatch GPU times (timestamp queries; a pass per dispatch, so a little slower).
  GPTOSS_WGPU_PROFILE=1 timeout 150 $G bench --backend wgpu --synthetic 20b --prompt 128 \
    --gen 16 > "$OUT/wgpu-profile-bench.txt" 2> "$OUT/wgpu-profile.txt"
  echo "profile rc=$?"; head -40 "$OUT/wgpu-profile.txt"
fi
if [ -z "${SKIP_DEQ:-}" ]; then
  echo "cuda-bf16 --dequantize"
  timeout 120 $G bench --backend cuda-bf16 --synthetic 20b --prompt 512 --gen 64 --dequantize 2>&1 | tail -1
fi
