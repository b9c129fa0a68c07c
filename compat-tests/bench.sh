#!/usr/bin/env bash
# Benchmark: release `courier dev` clusters (durable ledgers) driven by
# librdkafka through compat-tests' courier-bench, in one run: 1 replica,
# then 4 replicas ordering every partition by PBFT (all in one process on
# this machine's cores, with the client). Prints each case, then the
# 4-replica/1-replica ratios.
#
# Usage: compat-tests/bench.sh [--short] [extra courier-bench args]
#   COURIER_BENCH_RECORDS=n   records per case (default 200,000; --short: 20,000)
#   COURIER_BENCH_REPLICAS="1 4 7 2x4"   which clusters to run (default "1 4");
#                                        2x4: 8 nodes, two PBFT clusters of 4 (`courier dev --nodes 8`)
# For clusters of several nodes it also samples the global-ledger lag (the
# Raft leader's `/global`) during the run and the catch-up time after it,
# with compat-tests/python/global_lag.py (COURIER_BENCH_PYTHON, default python3).
# Builds nothing: run `cargo build --release -p courier -p courier-compat-tests` first.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
records=${COURIER_BENCH_RECORDS:-200000}
if [ "${1:-}" = "--short" ]; then records=20000; shift; fi
replicas_list=${COURIER_BENCH_REPLICAS:-1 4}
data=$(mktemp -d)
results=$data/results.tsv
# Below the ephemeral range (32768+), so no outgoing connection holds one of
# the cluster's ports (node i: Kafka port + i, peers Kafka port + 10000 + i).
port=${COURIER_BENCH_PORT:-22092}
admin_port=$((port + 600))
python=${COURIER_BENCH_PYTHON:-python3}
pid=
lag_pid=
cleanup() {
  [ -n "$lag_pid" ] && kill "$lag_pid" 2>/dev/null
  [ -n "$pid" ] && kill "$pid" 2>/dev/null
  rm -rf "$data"
}
trap cleanup EXIT

echo "$records records per case, $(nproc) cores shared by the client and every replica"
for replicas in $replicas_list; do
  dir=$data/r$replicas
  case $replicas in
    2x4) shape=(--nodes 8); nodes=8; label=courier-2x4 ;;
    *) shape=(--replicas "$replicas"); nodes=$replicas; label=courier-${replicas}r ;;
  esac
  "$top/target/release/courier" dev "${shape[@]}" --port "$port" --admin-port "$admin_port" --data-dir "$dir" \
    >"$data/courier-$replicas.log" 2>&1 &
  pid=$!
  # Nodes start in order: the last one listening means all are up.
  last=$((port + nodes - 1))
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$last") 2>/dev/null && break; sleep 0.1; done
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "courier dev ${shape[*]} did not start:"; cat "$data/courier-$replicas.log"; exit 1
  fi
  echo "courier dev ${shape[*]} (ledger.fsync=true)"
  if [ "$nodes" -gt 1 ]; then
    "$python" "$top/compat-tests/python/global_lag.py" "127.0.0.1:$admin_port" "$nodes" "$data/done-$replicas" \
      "$label" >"$data/lag-$replicas.txt" 2>&1 &
    lag_pid=$!
  fi
  "$top/target/release/courier-bench" --bootstrap "127.0.0.1:$port" --records "$records" \
    --label "$label" --broker-pid "$pid" --results "$results" "$@"
  if [ -n "$lag_pid" ]; then
    touch "$data/done-$replicas"
    wait "$lag_pid" || echo "$label: the global ledger did not catch up within 60 s"
    lag_pid=
    cat "$data/lag-$replicas.txt" >>"$data/lag.txt"
  fi
  kill -INT "$pid"; wait "$pid" || true; pid=
done

# Ratios of every cluster to the 1-replica one (and of two clusters of 4 to
# one cluster of 4), case by case.
for base in courier-1r $(case " $replicas_list " in *" 2x4 "*) echo courier-4r ;; esac); do
awk -F'\t' -v base="$base" -v only="$([ "$base" = courier-4r ] && echo courier-2x4)" '
  { key = $2 "\t" $3; label[NR] = $1; k[NR] = key
    prod[$1, key] = $4; cons[$1, key] = $5; cpu[$1, key] = $6; p50[$1, key] = $7; p99[$1, key] = $8 }
  END {
    printf "\n%-12s %6s %4s %14s %14s %18s %22s\n", "ratio", "size", "part", "produce x", "consume x", "broker CPU/GB x", "paced p50/p99 ms"
    for (i = 1; i <= NR; i++) {
      l = label[i]; key = k[i]
      if (l == base || !((base, key) in prod) || (only != "" && l != only)) continue
      split(key, f, "\t")
      b = cpu[base, key] + 0
      c = b > 0 ? sprintf("%.1f", cpu[l, key] / b) : "-"
      printf "%-12s %6s %4s %14.2f %14.2f %18s %15.1f/%.1f\n", l "/" substr(base, 9), f[1], f[2],
        prod[l, key] / prod[base, key], cons[l, key] / cons[base, key],
        c, p50[l, key], p99[l, key]
    }
  }' "$results"
done

if [ -f "$data/lag.txt" ]; then echo; cat "$data/lag.txt"; fi
