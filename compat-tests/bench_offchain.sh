#!/usr/bin/env bash
# Benchmark of off-chain values, in one run, on release `courier dev`
# clusters of 4 replicas (durable ledgers) driven by librdkafka through
# courier-bench: 16 MiB values, each one different, on a topic that keeps
# them inline (every replica orders and stores every byte) against one with
# `courier.offchain.threshold.bytes` (the producing node stores each value
# once in its organization's storage; replicas order a descriptor).
#
# Reports produce and consume throughput (medians over the rounds), the
# delivery throughput (all bytes produced, then consumed: 1 / (1/produce +
# 1/consume)), their ratios, and the bytes each case left on disk: per
# replica (ledger, PBFT log, Raft file) and in the organization's storage.
#
# Usage: compat-tests/bench_offchain.sh [--short]
#   COURIER_BENCH_RECORDS=n   values per case (default 48, 768 MiB; --short: 12)
#   COURIER_BENCH_ROUNDS=n    rounds (default 3; --short: 1)
# Builds nothing: run `cargo build --release -p courier -p courier-compat-tests` first.
set -euo pipefail
bench_port_default=26092
short=; [ "${1:-}" = "--short" ] && short=1
. "$(dirname "$0")/bench_setup.sh"
records=${COURIER_BENCH_RECORDS:-$([ -n "$short" ] && echo 12 || echo 48)}
size=$((16 << 20))
client=(-X message.max.bytes=20000000 -X fetch.max.bytes=100000000 -X max.partition.fetch.bytes=20000000
  -X receive.message.max.bytes=200000000)

run_case() {
  local label=$1
  shift
  local dir=$data/$label-$RANDOM
  local topic_configs=()
  for s in "$@"; do topic_configs+=(--topic-config "$s"); done
  "$top/target/release/courier" dev --replicas 4 --port "$port" --admin-port 0 --data-dir "$dir" \
    >"$data/courier-$label.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$((port + 3))) 2>/dev/null && break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null || { echo "courier dev did not start:"; cat "$data/courier-$label.log"; exit 1; }
  "$top/target/release/courier-bench" --bootstrap "127.0.0.1:$port" --records "$records" \
    --sizes "$size" --partitions 1 --paced-fraction 0 --label "$label" --broker-pid "$pid" \
    --distinct-values "${topic_configs[@]}" "${client[@]}" --results "$results" | grep -v '^#' || true
  kill -INT "$pid"
  wait "$pid" 2>/dev/null || true
  pid=
  local replica=0 n
  for n in 0 1 2 3; do
    replica=$((replica + $(du -sb --apparent-size "$dir/node-$n" | cut -f1)))
  done
  local storage
  storage=$(du -sb --apparent-size "$dir/storage" 2>/dev/null | cut -f1 || echo 0)
  printf '%s\t%s\t%s\n' "$label" "$((replica / 4))" "${storage:-0}" >>"$data/disk.tsv"
  rm -rf "$dir"
}

echo "$records values of 16 MiB per case, 1 partition, 4 replicas, $rounds round(s), $(nproc) cores"
cases=(inline offchain)
for round in $(seq 1 "$rounds"); do
  echo "round $round"
  for i in 0 1; do
    c=${cases[$(((i + round - 1) % 2))]}
    case $c in
      inline) run_case "$c" max.message.bytes=17825792 ;;
      offchain) run_case "$c" courier.offchain.threshold.bytes=1048576 ;;
    esac
  done
done

awk -F'\t' "$awk_median"'
  FILENAME == ARGV[1] {
    produce[$1] = produce[$1] " " $4; consume[$1] = consume[$1] " " $5
    # Delivery: every byte produced, then consumed (one round trip of the data).
    if ($4 > 0 && $5 > 0) deliver[$1] = deliver[$1] " " 1 / (1 / $4 + 1 / $5)
    next
  }
  { replica[$1] = replica[$1] " " $2; storage[$1] = storage[$1] " " $3 }
  END {
    for (l in produce)
      printf "%-9s produce %7.1f MB/s  consume %7.1f MB/s  delivery %7.1f MB/s  on disk per replica %7.1f MB, in storage %7.1f MB (medians)\n",
        l, median(produce[l]), median(consume[l]), median(deliver[l]), median(replica[l]) / 1e6, median(storage[l]) / 1e6
    if ("inline" in produce && "offchain" in produce)
      printf "off-chain/inline: produce %.2f, consume %.2f, delivery %.2f\n",
        median(produce["offchain"]) / median(produce["inline"]), median(consume["offchain"]) / median(consume["inline"]),
        median(deliver["offchain"]) / median(deliver["inline"])
  }' "$results" "$data/disk.tsv"
