#!/usr/bin/env bash
# Benchmark: a release `courier dev` (durable ledger: fsync per commit
# round) driven by librdkafka through compat-tests' courier-bench.
#
# Usage: compat-tests/bench.sh [--short] [extra courier-bench args]
# Builds nothing: run `cargo build --release -p courier -p courier-compat-tests` first.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
records=${COURIER_BENCH_RECORDS:-200000}
if [ "${1:-}" = "--short" ]; then records=20000; shift; fi
data=$(mktemp -d)
port=${COURIER_BENCH_PORT:-49092}
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$data"; }
trap cleanup EXIT

"$top/target/release/courier" dev --port "$port" --admin-port 0 --data-dir "$data" >"$data.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.1; done
echo "courier dev (1 replica, ledger.fsync=true), $records records per case, $(nproc) cores shared with the client"
"$top/target/release/courier-bench" --bootstrap "127.0.0.1:$port" --records "$records" --label courier-1r --broker-pid "$pid" "$@"
kill -INT "$pid"; wait "$pid" || true; pid=
rm -f "$data.log"
