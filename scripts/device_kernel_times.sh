#!/usr/bin/env bash
# Device: Nsight Compute's gpu__time_duration (us) of the kernels matching KREGEX in one 20b
# decode step, once for each plugin folder in PLUGINS (GPTOSS_PLUGIN_PATH), so a kernel change
# is timed on one machine without the bench's run-to-run spread.
# CACHE=none keeps L2 between kernels (what one kernel left there for the next).
set -uo pipefail
export XDG_CACHE_HOME=${XDG_CACHE_HOME:-/tmp/gptoss-cache}
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
for pp in ${PLUGINS:-dist}; do
  GPTOSS_PLUGIN_PATH=$pp timeout 150 $NCU --clock-control none --cache-control ${CACHE:-all} --metrics gpu__time_duration.sum \
    -k regex:"${KREGEX:-moe_t1}" --launch-skip ${SKIP:-48} --launch-count ${COUNT:-8} \
    ./dist/gptoss bench --backend cuda-mxfp4 --synthetic ${PRESET:-20b} --prompt 128 --gen 4 2>&1 |
    grep -E "^  [a-z_0-9]+ \(|gpu__time_duration" | paste - - |
    awk -v p="$pp" '{t[$1] += $NF; n[$1]++} END {for (k in t) printf "%s %s %.2f us (mean of %d)\n", p, k, t[k] / n[k], n[k]}'
done
