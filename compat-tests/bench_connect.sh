#!/usr/bin/env bash
# Benchmark of the connectors on a release `courier dev --secure` (4
# replicas, two organizations, durable ledgers): files dropped into org A's
# outbox go through the file source connector, an off-chain topic
# (`orders`, values above 1 MiB stay in org A's storage) and the file sink
# connector into org B's inbox. Reports, per round, the time from the drop
# to the last file checked in the inbox, the throughput, and what each
# replica wrote for it (ledger, PBFT log, Raft file).
#
# Usage: compat-tests/bench_connect.sh [--short]
#   COURIER_BENCH_FILES=n     files per round (default 8; --short: 2)
#   COURIER_BENCH_FILE_MIB=n  MiB per file (default 128: 1 GiB a round)
#   COURIER_BENCH_ROUNDS=n    rounds (default 3; --short: 1)
# Builds nothing: run `cargo build --release -p courier` first.
set -euo pipefail
bench_port_default=27092
short=; [ "${1:-}" = "--short" ] && short=1
. "$(dirname "$0")/bench_setup.sh"
files=${COURIER_BENCH_FILES:-$([ -n "$short" ] && echo 2 || echo 8)}
mib=${COURIER_BENCH_FILE_MIB:-128}
courier=$top/target/release/courier
connectors=()
cleanup_all() {
  for p in "${connectors[@]}"; do { kill -9 "$p" && wait "$p"; } 2>/dev/null || true; done
  # COURIER_BENCH_LOGS=DIR keeps the connectors' and the cluster's logs.
  [ -n "${COURIER_BENCH_LOGS:-}" ] && mkdir -p "$COURIER_BENCH_LOGS" && cp "$data"/*.log "$COURIER_BENCH_LOGS"/
  cleanup
}
trap cleanup_all EXIT

"$courier" dev --secure --port "$port" --admin-port 0 --data-dir "$data/d" >"$data/dev.log" 2>&1 &
pid=$!
for _ in $(seq 1 300); do grep -q "Press Ctrl-C" "$data/dev.log" 2>/dev/null && break; sleep 0.1; done
grep -q "Press Ctrl-C" "$data/dev.log" || { echo "courier dev --secure did not start"; cat "$data/dev.log"; exit 1; }
outbox=$data/d/storage/org-a/outbox
inbox=$data/d/storage/org-b/inbox
for c in org-a-outbox org-b-inbox; do
  "$courier" connect --config "$data/d/connect/$c.properties" >"$data/$c.log" 2>&1 &
  connectors+=($!)
done

replica_bytes() {
  local total=0 n
  for n in 0 1 2 3; do total=$((total + $(du -sb --apparent-size "$data/d/node-$n" | cut -f1))); done
  echo $((total / 4))
}

echo "$files files of $mib MiB per round (each different), $rounds round(s), 4 replicas, $(nproc) cores"
mkdir -p "$data/staging"
for round in $(seq 1 "$rounds"); do
  names=()
  for i in $(seq 1 "$files"); do
    f=r$round-$i.bin
    head -c $((mib << 20)) /dev/urandom >"$data/staging/$f"
    names+=("$f")
  done
  before=$(replica_bytes)
  start=$(date +%s.%N)
  for f in "${names[@]}"; do mv "$data/staging/$f" "$outbox/$f"; done
  deadline=$((SECONDS + 900))
  for f in "${names[@]}"; do
    until [ -e "$inbox/$f" ]; do
      [ $SECONDS -lt $deadline ] || { echo "$f did not arrive"; tail -5 "$data"/org-*.log; exit 1; }
      sleep 0.05
    done
  done
  end=$(date +%s.%N)
  for f in "${names[@]}"; do cmp -s "$outbox/$f" "$inbox/$f" || { echo "$f differs"; exit 1; }; done
  after=$(replica_bytes)
  awk -v s="$start" -v e="$end" -v n="$files" -v m="$mib" -v w=$((after - before)) -v r="$round" 'BEGIN {
    t = e - s; b = n * m * 1048576
    printf "round %d: %.1f s, %.1f MB/s from the outbox to the inbox (checked); %.2f MB written per replica\n", r, t, b / t / 1e6, w / 1e6
    printf "%d\t%.3f\t%.1f\t%d\n", r, t, b / t / 1e6, w > "/dev/stderr"
  }' 2>>"$results"
  rm -f "$outbox"/r"$round"-* "$inbox"/r"$round"-*
done
awk -F'\t' "$awk_median"' { t = t " " $3 } END { printf "median: %.1f MB/s\n", median(t) }' "$results"
