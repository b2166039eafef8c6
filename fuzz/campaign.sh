#!/usr/bin/env bash
# Fuzzing campaign: runs each named target (default: all) for SECONDS (default 900) in turn,
# keeps the grown corpus in corpus/TARGET and prints runs and libFuzzer's last status for each.
# Usage: fuzz/campaign.sh [-a] [SECONDS] [TARGET...]      logs go to fuzz/logs/TARGET.log
# -a keeps debug assertions and overflow checks in the optimized build (slower; CI's smoke run).
set -euo pipefail
cd "$(dirname "$0")"
build=(-O)
if [ "${1:-}" = -a ]; then
  build=(-O -a)
  shift
fi
seconds="${1:-900}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)
./seed.sh
mkdir -p logs
# All targets are built first, so that a build error is printed as such and not as a failed run.
for t in "${targets[@]}"; do
  if ! cargo +nightly fuzz build "${build[@]}" "$t" >logs/build.log 2>&1; then
    tail -n 60 logs/build.log
    df -h . || true
    echo "building fuzz target $t failed"
    exit 1
  fi
done
for t in "${targets[@]}"; do
  start=$(date +%s)
  if ! cargo +nightly fuzz run "${build[@]}" "$t" -- -max_total_time="$seconds" -rss_limit_mb=2048 \
    -print_final_stats=1 >"logs/$t.log" 2>&1; then
    # libFuzzer's report, the failing input (base64, as libFuzzer prints it) and how to rerun it.
    grep -v -E '^#[0-9]+' "logs/$t.log" | tail -n 80
    echo "fuzz target $t failed; its input is in fuzz/artifacts/$t (base64 above)"
    exit 1
  fi
  end=$(date +%s)
  last=$(grep -E '^#[0-9]+' "logs/$t.log" | tail -n 1)
  runs=$(grep -E '^stat::number_of_executed_units' "logs/$t.log" | awk '{print $2}')
  echo "$t: $((end - start)) s, $runs runs; last status: $last"
done
