#!/usr/bin/env bash
# Long fuzzing campaign: runs each named target (default: all) for SECONDS (default 900) in turn,
# keeps the grown corpus in corpus/TARGET and prints libFuzzer's final statistics for each.
# Usage: fuzz/campaign.sh [SECONDS] [TARGET...]      logs go to fuzz/logs/TARGET.log
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-900}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)
./seed.sh
mkdir -p logs
for t in "${targets[@]}"; do
  cargo +nightly fuzz build -O "$t"
  start=$(date +%s)
  cargo +nightly fuzz run -O "$t" -- -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 \
    >"logs/$t.log" 2>&1 || { tail -n 40 "logs/$t.log"; exit 1; }
  end=$(date +%s)
  last=$(grep -E '^#[0-9]+' "logs/$t.log" | tail -n 1)
  runs=$(grep -E '^stat::number_of_executed_units' "logs/$t.log" | awk '{print $2}')
  echo "$t: $((end - start)) s, $runs runs; last status: $last"
done
