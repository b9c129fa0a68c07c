#!/usr/bin/env bash
# Black-box compatibility run: starts `courier dev` (4 replicas unless
# COURIER_COMPAT_REPLICAS says otherwise), drives it with kcat,
# confluent-kafka, kafka-python and kafkajs, then checks every replica's
# ledger offline: each must verify (chains, batches, quorum certificates)
# after all of that, and one replica's ledger must fail to verify once a
# stored record in it is changed by hand, while the others still verify.
#
# Usage: compat-tests/run.sh PATH/TO/courier PYTHON [NODE_MODULES]
# (kafkajs runs when NODE_MODULES holds it.)
set -euo pipefail
courier=$1
python=$2
node_modules=${3:-}
here=$(cd "$(dirname "$0")" && pwd)
data=$(mktemp -d)
# Below the ephemeral range (32768+), so no outgoing connection holds one of
# the cluster's ports (node i: Kafka port + i, peers Kafka port + 10000 + i).
port=${COURIER_COMPAT_PORT:-21092}
replicas=${COURIER_COMPAT_REPLICAS:-4}
log=$data/courier.log
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$data"; }
trap cleanup EXIT
[ -n "${COMPAT_KEEP_LOG:-}" ] && trap 'cp "$log" /tmp/compat-courier.log; cleanup' EXIT

"$courier" dev --replicas "$replicas" --port "$port" --admin-port 0 --data-dir "$data/ledger" \
  >"$log" 2>&1 &
pid=$!
# Nodes start in order: the last one listening means all are up.
for _ in $(seq 1 100); do
  (exec 3<>/dev/tcp/127.0.0.1/$((port + replicas - 1))) 2>/dev/null && break
  sleep 0.1
done
kill -0 "$pid" 2>/dev/null || { echo "FAIL courier dev did not start"; cat "$log"; exit 1; }
boot=127.0.0.1:$port

"$here/kcat_compat.sh" "$boot"
"$python" "$here/python/confluent_compat.py" "$boot"
"$python" "$here/python/kafka_python_compat.py" "$boot"
if [ -n "$node_modules" ]; then
  NODE_PATH="$node_modules" node "$here/node/kafkajs_compat.js" "$boot"
fi

# A unique value to find on disk later.
echo "marker:COURIER-TAMPER-MARKER-0123456789" | kcat -b "$boot" -P -t tamper -K:
if [ "$replicas" -gt 1 ]; then
  # Every replica serves what was produced through node 0. Acknowledged
  # means 2f + 1 replicas certified it; the last node may be the one still
  # catching up, so it gets a bounded while.
  last=$((port + replicas - 1))
  got=
  for _ in $(seq 1 50); do
    got=$(kcat -b "127.0.0.1:$last" -C -t tamper -o beginning -e -q -f '%k\n' 2>/dev/null || true)
    [ "$got" = "marker" ] && break
    sleep 0.2
  done
  [ "$got" = "marker" ] || { echo "FAIL node $((replicas - 1)) does not serve the record within 10 s"; exit 1; }
  echo "ok   the last replica serves what node 0 acknowledged"
  nodes=$(seq 0 $((replicas - 1)) | sed "s|^|$data/ledger/node-|")
else
  nodes=$data/ledger
fi

kill -INT "$pid"
wait "$pid" || true
pid=
for dir in $nodes; do
  "$courier" ledger verify --data-dir "$dir" | tail -2 \
    || { echo "FAIL ledger verify of $dir after the compat run"; cat "$log"; exit 1; }
  # Captured first: `grep -q` stops reading at the first match, and the
  # writer's SIGPIPE would fail the pipeline (pipefail) at random.
  receipts=$("$courier" ledger receipts --data-dir "$dir" --group cf-group)
  grep -q "^cf-compat" <<<"$receipts" \
    || { echo "FAIL no receipts for cf-group on the ledger in $dir"; exit 1; }
done
echo "ok   every replica's ledger verifies after every client ran"
"$courier" ledger receipts --data-dir "$(echo "$nodes" | head -1)" --group cf-group | tail -3
echo "ok   the group's commits are receipts on every replica's ledger"

# Change one byte of the stored record by hand, in one replica's ledger.
victim=$(echo "$nodes" | tail -1)
"$python" - "$victim" <<'PY'
import os, sys
marker = b"COURIER-TAMPER-MARKER-0123456789"
for name in sorted(os.listdir(sys.argv[1])):
    path = os.path.join(sys.argv[1], name)
    data = bytearray(open(path, "rb").read())
    at = data.find(marker)
    if at >= 0:
        data[at] ^= 0x01
        open(path, "wb").write(data)
        print(f"flipped one bit of the stored record in {name}")
        break
else:
    sys.exit("marker not found in the ledger files")
PY
if "$courier" ledger verify --data-dir "$victim"; then
  echo "FAIL ledger verify accepted a hand-corrupted block"; exit 1
fi
echo "ok   ledger verify rejects a hand-corrupted block"
for dir in $nodes; do
  [ "$dir" = "$victim" ] && continue
  "$courier" ledger verify --data-dir "$dir" >/dev/null \
    || { echo "FAIL corrupting one replica broke another's ledger ($dir)"; exit 1; }
done
[ "$replicas" -gt 1 ] && echo "ok   the other replicas' ledgers still verify"
echo "compat: all checks passed"
