#!/usr/bin/env bash
# Throughput against core count (docs/PERFORMANCE.md): generates two cities and benches them,
# and the demo, pinned to 1, 2, 4, 8 and 16 cores with taskset. Run from the repository root
# on the machine to measure: CITYOPS=path/to/cityops benches/core_scaling.sh [OUT_FILE]
set -euo pipefail
B=${CITYOPS:-target/release/cityops}
OUT=${1:-core-scaling.txt}
TMP=$(mktemp -d)
nproc
"$B" gen --devices 100000 --interval 60s --duration 7m --incidents 0 --gateway 100 --out "$TMP/gw.jsonl.zst" --labels "$TMP/l1.jsonl" 2>&1 | tail -1
"$B" gen --devices 100000 --interval 60s --duration 7m --incidents 0 --out "$TMP/single.jsonl.zst" --labels "$TMP/l2.jsonl" 2>&1 | tail -1
for f in gw single; do for c in 1 2 4 8 16; do for r in 1 2; do
  [ "$c" -le "$(nproc)" ] || continue
  line=$(taskset -c 0-$((c-1)) "$B" bench "$TMP/$f.jsonl.zst" --speed max --queries queries --out "$TMP/out" 2>&1 | grep -E "^bench:.*readings")
  echo "$f cores=$c run=$r $line" | tee -a "$OUT"
done; done; done
for c in 1 2 4 8 16; do
  [ "$c" -le "$(nproc)" ] || continue
  line=$(taskset -c 0-$((c-1)) "$B" bench --speed max --queries queries --out "$TMP/out" 2>&1 | grep -E "^bench:.*readings")
  echo "demo cores=$c $line" | tee -a "$OUT"
done
rm -rf "$TMP"
