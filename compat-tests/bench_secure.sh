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
# Each round runs the three listeners in a rotated order (the ledger grows
# as the run goes on, so no listener always comes last); the ratios are of
# the medians over the rounds. Every case starts on the same cluster: its
# topics are deleted once it is measured, and before it the run waits (at
# most 60 s) until the broker uses under 15% of a core, so that no case
# pays for work an earlier one left behind (the global-ledger task
# catching up, the ledger and idle partitions of earlier cases).
#
# Usage: compat-tests/bench_secure.sh [--short]
#   COURIER_BENCH_RECORDS=n   records per case (default 100,000; --short: 20,000)
#   COURIER_BENCH_ROUNDS=n    rounds (default 3; --short: 1)
# Builds nothing: run `cargo build --release -p courier -p courier-compat-tests` first.
set -euo pipefail
bench_port_default=24092
. "$(dirname "$0")/bench_setup.sh"

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
    --label "$label" --broker-pid "$pid" --results "$results" --settle-below 15 --delete-topics "$@"
}
plaintext() { bench plaintext "127.0.0.1:$((port + 200))"; }
ssl() {
  bench ssl "127.0.0.1:$((port + 100))" -X security.protocol=SSL -X "ssl.ca.location=$certs/ca.pem" \
    -X "ssl.certificate.location=$certs/users/admin.pem" -X "ssl.key.location=$certs/users/admin.key"
}
sasl_ssl() {
  bench sasl_ssl "127.0.0.1:$port" -X security.protocol=SASL_SSL -X sasl.mechanisms=SCRAM-SHA-512 \
    -X sasl.username=admin -X sasl.password=admin-secret -X "ssl.ca.location=$certs/ca.pem"
}
order=(plaintext ssl sasl_ssl)
for round in $(seq 1 "$rounds"); do
  echo "round $round: ${order[*]}"
  for l in "${order[@]}"; do "$l"; done
  order=("${order[@]:1}" "${order[0]}")
done
kill -INT "$pid"; wait "$pid" || true; pid=

# Medians over the rounds, then the ratios to PLAINTEXT.
awk -F'\t' "$awk_median"'
  { key = $1 "\t" $2 "\t" $3; if (!(key in prod)) order[++n] = key
    prod[key] = prod[key] " " $4; cons[key] = cons[key] " " $5; cpu[key] = cpu[key] " " $6 }
  END {
    printf "\n%-10s %6s %4s %16s %16s %18s   (medians of the rounds: produce MB/s / consume MB/s / broker CPU s/GB)\n", "target", "size", "part", "produce", "consume", "broker CPU/GB"
    for (i = 1; i <= n; i++) {
      k = order[i]; split(k, f, "\t")
      P[k] = median(prod[k]); C[k] = median(cons[k]); U[k] = median(cpu[k])
      printf "%-10s %6s %4s %16.1f %16.1f %18.1f\n", f[1], f[2], f[3], P[k], C[k], U[k]
    }
    printf "\n%-20s %6s %4s %12s %12s %18s\n", "ratio", "size", "part", "produce x", "consume x", "broker CPU/GB x"
    for (i = 1; i <= n; i++) {
      k = order[i]; split(k, f, "\t")
      if (f[1] == "plaintext") continue
      b = "plaintext\t" f[2] "\t" f[3]
      printf "%-20s %6s %4s %12.2f %12.2f %18.2f\n", f[1] "/plaintext", f[2], f[3], P[k] / P[b], C[k] / C[b], U[k] / U[b]
    }
  }' "$results"
