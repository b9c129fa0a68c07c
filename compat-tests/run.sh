#!/usr/bin/env bash
# Black-box compatibility run: starts `courier dev`, drives it with kcat,
# confluent-kafka, kafka-python and kafkajs, then checks the ledger offline: it must
# verify after all of that, and must fail to verify once a stored record is
# changed by hand.
#
# Usage: compat-tests/run.sh PATH/TO/courier PYTHON [NODE_MODULES]
# (kafkajs runs when NODE_MODULES holds it.)
set -euo pipefail
courier=$1
python=$2
node_modules=${3:-}
here=$(cd "$(dirname "$0")" && pwd)
data=$(mktemp -d)
port=${COURIER_COMPAT_PORT:-39092}
log=$data/courier.log
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$data"; }
trap cleanup EXIT
[ -n "${COMPAT_KEEP_LOG:-}" ] && trap 'cp "$log" /tmp/compat-courier.log; cleanup' EXIT

"$courier" dev --port "$port" --admin-port 0 --data-dir "$data/ledger" \
  >"$log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
  (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break
  sleep 0.1
done
boot=127.0.0.1:$port

"$here/kcat_compat.sh" "$boot"
"$python" "$here/python/confluent_compat.py" "$boot"
"$python" "$here/python/kafka_python_compat.py" "$boot"
if [ -n "$node_modules" ]; then
  NODE_PATH="$node_modules" node "$here/node/kafkajs_compat.js" "$boot"
fi

# A unique value to find on disk later.
echo "marker:COURIER-TAMPER-MARKER-0123456789" | kcat -b "$boot" -P -t tamper -K:

kill -INT "$pid"
wait "$pid" || true
pid=
"$courier" ledger verify --data-dir "$data/ledger" || { echo "FAIL ledger verify after the compat run"; cat "$log"; exit 1; }
echo "ok   ledger verifies after every client ran"
"$courier" ledger receipts --data-dir "$data/ledger" --group cf-group | tail -4
"$courier" ledger receipts --data-dir "$data/ledger" --group cf-group | grep -q "^cf-compat" \
  || { echo "FAIL no receipts for cf-group on the ledger"; exit 1; }
echo "ok   the group's commits are receipts on the ledger"

# Change one byte of the stored record by hand.
"$python" - "$data/ledger" <<'PY'
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
if "$courier" ledger verify --data-dir "$data/ledger"; then
  echo "FAIL ledger verify accepted a hand-corrupted block"; exit 1
fi
echo "ok   ledger verify rejects a hand-corrupted block"
echo "compat: all checks passed"
