#!/usr/bin/env bash
# Benchmark of the ledger's integrity work, in one run, on release
# `courier dev` clusters of 4 replicas (durable ledgers) driven by
# librdkafka through courier-bench:
#
# * verified reads: consume throughput with `ledger.verify.reads` on (the
#   default: every block read checks its head's hash and its payload's
#   CRC-32C) against off (reads as they were before verification);
# * the scrubber: produce throughput while every replica scrubs its ledger
#   continuously at 8 MB/s (the default rate) and at 64 MB/s, against no
#   scrubbing. Each scrubbing cluster first holds a preloaded topic, so the
#   scrubber has blocks to read while the measured case produces.
#
# Every case runs on a fresh cluster; each round runs the cases in a
# rotated order. The ratios are of the medians over the rounds.
#
# Usage: compat-tests/bench_storage.sh [--short]
#   COURIER_BENCH_RECORDS=n   records per case (default 100,000; --short: 20,000)
#   COURIER_BENCH_ROUNDS=n    rounds (default 3; --short: 1)
#   COURIER_BENCH_CASES="verify-off verify-on"   which cases (default all five)
#   COURIER_BENCH_TODAY=PATH  a `courier` binary built before verified reads:
#                             adds the case `today` (consume as it was), to
#                             compare verify-on with
# The ledger's read path alone (no client, no network) is measured by
# `target/release/ledger-read-bench` (verified reads on and off, and a
# SHA-256 of every read for comparison).
# Builds nothing: run `cargo build --release -p courier -p courier-compat-tests` first.
set -euo pipefail
bench_port_default=25092
. "$(dirname "$0")/bench_setup.sh"

# One case: a fresh 4-replica cluster with the given settings, an optional
# unmeasured preload, then the measured courier-bench case.
run_case() {
  local label=$1 preload=$2
  shift 2
  local dir=$data/$label-$RANDOM
  local sets=()
  for s in "$@"; do sets+=(--set "$s"); done
  "${bin:-$top/target/release/courier}" dev --replicas 4 --port "$port" --admin-port 0 --data-dir "$dir" "${sets[@]}" \
    >"$data/courier-$label.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$((port + 3))) 2>/dev/null && break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null || { echo "courier dev did not start:"; cat "$data/courier-$label.log"; exit 1; }
  if [ "$preload" -gt 0 ]; then
    "$top/target/release/courier-bench" --bootstrap "127.0.0.1:$port" --records "$preload" \
      --sizes 1024 --partitions 1 --paced-fraction 0 --label preload >/dev/null
  fi
  "$top/target/release/courier-bench" --bootstrap "127.0.0.1:$port" --records "$records" \
    --sizes 1024 --partitions 1 --paced-fraction 0 --label "$label" --broker-pid "$pid" \
    --settle-below 15 --results "$results" | grep -v '^#' || true
  kill -INT "$pid"
  wait "$pid" 2>/dev/null || true
  pid=
  rm -rf "$dir"
}

echo "$records records of 1 KiB per case, 1 partition, 4 replicas, $rounds round(s), $(nproc) cores"
read -r -a cases <<<"${COURIER_BENCH_CASES:-verify-off verify-on scrub-0 scrub-8 scrub-64}"
[ -n "${COURIER_BENCH_TODAY:-}" ] && cases+=(today)
for round in $(seq 1 "$rounds"); do
  echo "round $round"
  n=${#cases[@]}
  for i in $(seq 0 $((n - 1))); do
    c=${cases[$(((i + round - 1) % n))]}
    case $c in
      today) bin=$COURIER_BENCH_TODAY run_case "$c" 0 ;;
      verify-off) run_case "$c" 0 ledger.verify.reads=false ledger.scrub.mb.per.second=0 ;;
      verify-on) run_case "$c" 0 ledger.verify.reads=true ledger.scrub.mb.per.second=0 ;;
      scrub-0) run_case "$c" "$records" ledger.scrub.mb.per.second=0 ;;
      scrub-8) run_case "$c" "$records" ledger.scrub.mb.per.second=8 ledger.scrub.interval.ms=100 ;;
      scrub-64) run_case "$c" "$records" ledger.scrub.mb.per.second=64 ledger.scrub.interval.ms=100 ;;
    esac
  done
done

# results.tsv: label, size, partitions, produce MB/s, consume MB/s, ...
awk -F'\t' "$awk_median"'
  { produce[$1] = produce[$1] " " $4; consume[$1] = consume[$1] " " $5 }
  END {
    for (l in produce) printf "%-10s produce %8.1f MB/s  consume %8.1f MB/s (medians)\n", l, median(produce[l]), median(consume[l])
    if ("verify-on" in consume && "today" in consume)
      printf "verified reads against today: consume verify-on/today %.2f\n", median(consume["verify-on"]) / median(consume["today"])
    if ("verify-on" in consume && "verify-off" in consume)
      printf "verified reads: consume verify-on/verify-off %.2f\n", median(consume["verify-on"]) / median(consume["verify-off"])
    if ("scrub-0" in produce && "scrub-8" in produce && "scrub-64" in produce)
      printf "scrubber: produce scrub-8/scrub-0 %.2f, scrub-64/scrub-0 %.2f\n",
        median(produce["scrub-8"]) / median(produce["scrub-0"]), median(produce["scrub-64"]) / median(produce["scrub-0"])
  }' "$results"
