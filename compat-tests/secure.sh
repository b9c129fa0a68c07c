#!/usr/bin/env bash
# Black-box run of `courier dev --secure` with the real clients: kcat,
# confluent-kafka and kafka-python produce over SASL_SSL (SCRAM-SHA-512) as
# org A's producer, consume and commit over SSL (client certificates) as
# org B's consumer, and an outsider without ACLs is refused. Afterwards the
# ledger's receipts name org B's principal and organization.
#
# Usage: compat-tests/secure.sh PATH/TO/courier PYTHON
set -euo pipefail
courier=$1
python=$2
here=$(cd "$(dirname "$0")" && pwd)
data=$(mktemp -d)
port=${COURIER_SECURE_PORT:-23092}
log=$data/courier.log
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$data"; }
trap cleanup EXIT

"$courier" dev --secure --port "$port" --admin-port 0 --data-dir "$data/d" >"$log" 2>&1 &
pid=$!
for _ in $(seq 1 200); do
  grep -q "Press Ctrl-C" "$log" 2>/dev/null && break
  sleep 0.1
done
grep -q "Press Ctrl-C" "$log" || { echo "FAIL courier dev --secure did not start"; cat "$log"; exit 1; }
clients=$data/d/clients

# kcat, with the settings files `courier dev --secure` wrote.
for i in $(seq 1 20); do echo "kc$i:hello$i"; done | kcat -F "$clients/a-producer.sasl.properties" -P -t orders -K: 2>/dev/null
echo "ok   kcat a-producer writes 20 records over SASL_SSL"
got=$(kcat -F "$clients/b-consumer.ssl.properties" -X auto.offset.reset=earliest -G org-b-kcat orders \
  -e -q -f '%k\n' 2>/dev/null | grep -c '^kc' || true)
[ "$got" = 20 ] || { echo "FAIL kcat b-consumer read $got of 20 over mTLS"; exit 1; }
echo "ok   kcat b-consumer reads them over mTLS in group org-b-kcat and commits"
if echo "x:y" | kcat -F "$clients/outsider.sasl.properties" -P -t orders -K: 2>"$data/out.err"; then
  echo "FAIL the outsider could write"; exit 1
fi
grep -q "Topic authorization failed" "$data/out.err" || { echo "FAIL outsider: $(cat "$data/out.err")"; exit 1; }
echo "ok   kcat outsider gets Topic authorization failed"

# courier users: a new user's password set through node 1 by the admin, then
# the user authenticates on node 3 (it has no ACLs: refused, but known).
echo "carol-pw" | "$courier" users set-password --command-config "$clients/admin.sasl.properties" \
  --bootstrap "127.0.0.1:$((port + 1))" --user carol >/dev/null
# Captured before grep -q reads it (pipefail and the writer's SIGPIPE).
grep -q "^carol .*SCRAM-SHA-512" <<<"$("$courier" users list --command-config "$clients/admin.sasl.properties")" \
  || { echo "FAIL courier users list does not show carol"; exit 1; }
sed -e 's/sasl.username=.*/sasl.username=carol/' -e 's/sasl.password=.*/sasl.password=carol-pw/' \
  -e "s/bootstrap.servers=.*/bootstrap.servers=127.0.0.1:$((port + 3))/" "$clients/admin.sasl.properties" >"$data/carol.properties"
if echo "x" | kcat -F "$data/carol.properties" -P -t orders 2>"$data/carol.err"; then
  echo "FAIL carol could write without an ACL"; exit 1
fi
grep -q "Topic authorization failed" "$data/carol.err" || { echo "FAIL carol: $(cat "$data/carol.err")"; exit 1; }
if echo "not-a-user" | "$courier" users set-password --command-config "$clients/outsider.sasl.properties" --user x 2>/dev/null; then
  echo "FAIL the outsider could set a password"; exit 1
fi
echo "ok   courier users: the admin sets carol's password on node 1, carol authenticates on node 3; the outsider may not"

"$python" "$here/python/secure_compat.py" "$data/d" "127.0.0.1:$port" "127.0.0.1:$((port + 100))"

kill -INT "$pid"
wait "$pid" || true
pid=
row=$("$courier" ledger receipts --data-dir "$data/d/node-0" --group org-b-kcat | grep '^orders' | tail -1)
grep -q "User:b-consumer *org-b " <<<"$row" \
  || { echo "FAIL the receipt does not name User:b-consumer of org-b: $row"; exit 1; }
echo "ok   the ledger's receipt names the receiver: $(echo "$row" | awk '{print $6, $7}')"
grep -q "authorization denied" "$log" || { echo "FAIL no audit line for the denials"; exit 1; }
echo "ok   denials are in the audit log"
echo "secure: all checks passed"
