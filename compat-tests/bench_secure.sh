#!/usr/bin/env bash
# Benchmark of the client doors: one release `courier dev --secure` cluster
# (4 replicas, ACLs enforced) with three listeners on every node, driven by
# librdkafka through courier-bench in one run: PLAINTEXT, SSL (client
# certificate) and SASL_SSL (SCRAM-SHA-512), 1 KiB records on 1 and 6
# partitions. Prints each case, then the SSL/PLAINTEXT and
# SASL_SSL/PLAINTEXT ratios of produce and consume throughput, and the CPU
# per GB of the client and the broker.
#
# The benchmark's principals are super users (admin over SASL_SSL and SSL,
# ANONYMOUS over PLAINTEXT), so each request skips the ACL walk; what it
# measures is the cost of TLS and of authentication.
#
# Usage: compat-tests/bench_secure.sh [--short]
#   COURIER_BENCH_RECORDS=n   records per case (default 200,000; --short: 20,000)
# Builds nothing: run `cargo build --release -p courier -p courier-compat-tests` first.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
records=${COURIER_BENCH_RECORDS:-200000}
if [ "${1:-}" = "--short" ]; then records=20000; shift; fi
data=$(mktemp -d)
results=$data/results.tsv
port=${COURIER_BENCH_PORT:-24092}
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$data"; }
trap cleanup EXIT

d=$data/d
"$top/target/release/courier" dev --secure --port "$port" --admin-port 0 --data-dir "$d" \
  --set "listeners=\"SASL_SSL://127.0.0.1:$port,SSL://127.0.0.1:$((port + 100)),PLAINTEXT://127.0.0.1:$((port + 200))\"" \
  --set 'super.users="User:admin;User:ANONYMOUS"' >"$data/courier.log" 2>&1 &
pid=$!
for _ in $(seq 1 300); do grep -q "Press Ctrl-C" "$data/courier.log" 2>/dev/null && break; sleep 0.1; done
grep -q "Press Ctrl-C" "$data/courier.log" || { echo "courier dev --secure did not start"; cat "$data/courier.log"; exit 1; }
echo "$records records per case, 1 KiB, 4 replicas (courier dev --secure), $(nproc) cores shared by the client and every replica"
certs=$d/certs
bench() {
  local label=$1 addr=$2; shift 2
  "$top/target/release/courier-bench" --bootstrap "$addr" --records "$records" --sizes 1024 --partitions 1,6 \
    --label "$label" --broker-pid "$pid" --results "$results" "$@"
}
bench plaintext "127.0.0.1:$((port + 200))"
bench ssl "127.0.0.1:$((port + 100))" -X security.protocol=SSL -X "ssl.ca.location=$certs/ca.pem" \
  -X "ssl.certificate.location=$certs/users/admin.pem" -X "ssl.key.location=$certs/users/admin.key"
bench sasl_ssl "127.0.0.1:$port" -X security.protocol=SASL_SSL -X sasl.mechanisms=SCRAM-SHA-512 \
  -X sasl.username=admin -X sasl.password=admin-secret -X "ssl.ca.location=$certs/ca.pem"
kill -INT "$pid"; wait "$pid" || true; pid=

awk -F'\t' '
  { key = $2 "\t" $3; label[NR] = $1; k[NR] = key
    prod[$1, key] = $4; cons[$1, key] = $5; cpu[$1, key] = $6 }
  END {
    printf "\n%-20s %6s %4s %12s %12s %18s\n", "ratio", "size", "part", "produce x", "consume x", "broker CPU/GB x"
    for (i = 1; i <= NR; i++) {
      l = label[i]; key = k[i]
      if (l == "plaintext") continue
      split(key, f, "\t")
      b = cpu["plaintext", key] + 0
      c = b > 0 ? sprintf("%.2f", cpu[l, key] / b) : "-"
      printf "%-20s %6s %4s %12.2f %12.2f %18s\n", l "/plaintext", f[1], f[2],
        prod[l, key] / prod["plaintext", key], cons[l, key] / cons["plaintext", key], c
    }
  }' "$results"
