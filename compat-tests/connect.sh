#!/usr/bin/env bash
# Black-box run of the connectors as the README gives them: `courier dev
# --secure`, then `courier connect` with the two files it wrote (org A's
# outbox into `orders`, `orders` into org B's inbox). Files dropped into the
# outbox arrive in the inbox byte for byte, also when either connector is
# killed (SIGKILL) mid-transfer and started again; the REST interface
# pauses, resumes, creates and deletes connectors with Kafka Connect's
# paths; `courier message locate` finds a file's ledger entry and its
# delivery receipt.
#
# Usage: compat-tests/connect.sh PATH/TO/courier PYTHON
set -euo pipefail
courier=$1
python=$2
data=$(mktemp -d)
port=${COURIER_CONNECT_PORT:-25092}
admin=${COURIER_CONNECT_ADMIN_PORT:-25644}
pids=()
cleanup() {
  for p in "${pids[@]}"; do { kill -9 "$p" && wait "$p"; } 2>/dev/null || true; done
  rm -rf "$data"
}
trap cleanup EXIT
fail() { echo "FAIL $*"; for l in "$data"/*.log; do echo "== $l"; tail -20 "$l"; done; exit 1; }

"$courier" dev --secure --port "$port" --admin-port "$admin" --data-dir "$data/d" >"$data/dev.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 300); do grep -q "Press Ctrl-C" "$data/dev.log" 2>/dev/null && break; sleep 0.1; done
grep -q "Press Ctrl-C" "$data/dev.log" || fail "courier dev --secure did not start"
source_cfg=$data/d/connect/org-a-outbox.properties
sink_cfg=$data/d/connect/org-b-inbox.properties
outbox=$data/d/storage/org-a/outbox
inbox=$data/d/storage/org-b/inbox
grep -q "courier connect --config $source_cfg" "$data/dev.log" || fail "courier dev does not print the source's command"

start_source() { "$courier" connect --config "$source_cfg" >>"$data/source.log" 2>&1 & source_pid=$!; pids+=($source_pid); }
start_sink() { "$courier" connect --config "$sink_cfg" >>"$data/sink.log" 2>&1 & sink_pid=$!; pids+=($sink_pid); }
# Waits (at most $2 s) until inbox file $1 equals outbox file $1.
arrives() {
  for _ in $(seq 1 $(($2 * 5))); do
    cmp -s "$outbox/$1" "$inbox/$1" 2>/dev/null && return 0
    sleep 0.2
  done
  return 1
}
rest() { # METHOD PORT PATH [JSON] -> prints "STATUS BODY"
  "$python" - "$@" <<'PY'
import sys, urllib.request, urllib.error
method, port, path = sys.argv[1:4]
body = sys.argv[4].encode() if len(sys.argv) > 4 else None
req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method,
                             headers={"Content-Type": "application/json"})
try:
    with urllib.request.urlopen(req, timeout=10) as r:
        print(r.status, r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
PY
}

start_source
start_sink
head -c 67108864 /dev/urandom >"$data/first.bin"
mv "$data/first.bin" "$outbox/first.bin"
arrives first.bin 120 || fail "first.bin did not arrive in org B's inbox"
echo "ok   a 64 MiB file dropped into org A's outbox arrives in org B's inbox, identical"
[ -n "$(find "$data/d/storage/org-a/objects" -type f -size 65536k)" ] || fail "org A's storage does not hold the file off-chain"
[ -z "$(find "$data/d/storage/org-b/objects" -type f 2>/dev/null)" ] || fail "org B's node stored an off-chain value"
echo "ok   the file stays off-chain in org A's storage; org B's nodes store none of it"

# Both killed mid-transfer, then started again: nothing lost, nothing twice.
head -c 134217728 /dev/urandom >"$data/second.bin"
mv "$data/second.bin" "$outbox/second.bin"
sleep 1.5
kill -9 "$source_pid"; wait "$source_pid" 2>/dev/null || true
start_source
# The sink is killed while it writes the file (a temporary file, never
# visible under its name), or just after, if that was too quick to catch.
for _ in $(seq 1 3000); do
  [ -n "$(ls -A "$inbox/.courier-connect/tmp" 2>/dev/null)" ] && break
  [ -e "$inbox/second.bin" ] && break
  sleep 0.02
done
[ -e "$inbox/second.bin" ] && when="just after it wrote it" || when="while it wrote it"
kill -9 "$sink_pid"; wait "$sink_pid" 2>/dev/null || true
start_sink
arrives second.bin 180 || fail "second.bin did not arrive after both connectors were killed"
echo "ok   a 128 MiB file arrives whole with both connectors killed (SIGKILL) mid-transfer and restarted (the sink $when)"

# REST, with Kafka Connect's paths.
[ "$(rest GET 8083 /connectors)" = '200 ["org-a-outbox"]' ] || fail "GET /connectors: $(rest GET 8083 /connectors)"
rest GET 8084 /connectors/org-b-inbox/status | grep -q '"state":"RUNNING"' || fail "sink status"
[ "$(rest PUT 8083 /connectors/org-a-outbox/pause | cut -d' ' -f1)" = 202 ] || fail "pause"
rest GET 8083 /connectors/org-a-outbox/status | grep -q '"state":"PAUSED"' || fail "paused status"
echo "while paused" >"$outbox/paused.txt"
sleep 3
[ ! -e "$inbox/paused.txt" ] || fail "a paused source sent a file"
[ "$(rest PUT 8083 /connectors/org-a-outbox/resume | cut -d' ' -f1)" = 202 ] || fail "resume"
arrives paused.txt 60 || fail "paused.txt did not arrive after resume"
echo "ok   REST: list, status, pause (nothing sent), resume (sent)"
spare=$data/d/storage/org-b/spare
created=$(rest POST 8084 /connectors "{\"name\":\"org-b-spare\",\"config\":{\"connector.class\":\"FileSink\",\"topics\":\"orders\",\"output.path\":\"$spare\",\"consumer.override.group.id\":\"connect-org-b-spare\"}}")
[ "${created%% *}" = 201 ] || fail "POST /connectors: $created"
for _ in $(seq 1 300); do cmp -s "$outbox/first.bin" "$spare/first.bin" 2>/dev/null && break; sleep 0.2; done
cmp -s "$outbox/first.bin" "$spare/first.bin" || fail "the sink created over REST wrote nothing"
[ "$(rest POST 8084 /connectors "{\"name\":\"org-b-spare\",\"config\":{}}" | cut -d' ' -f1)" = 409 ] || fail "duplicate create"
[ "$(rest DELETE 8084 /connectors/org-b-spare | cut -d' ' -f1)" = 204 ] || fail "delete"
[ "$(rest GET 8084 /connectors/org-b-spare | cut -d' ' -f1)" = 404 ] || fail "deleted connector still listed"
echo "ok   REST: a sink created over POST /connectors writes, a second create is 409, DELETE removes it"
rest GET 8084 /metrics | grep -q '^courier_connect_records_total{connector="org-b-inbox"} [1-9]' || fail "sink metrics"
echo "ok   /metrics counts each connector's records"

# The ledger entry and the receipt.
located=$("$courier" message locate --admin "127.0.0.1:$admin" --topic orders --key second.bin)
grep -q "sent by      User:a-producer of org-a" <<<"$located" || fail "locate: $located"
grep -q "delivered to group connect-org-b-inbox (User:b-consumer of org-b)" <<<"$located" || fail "no receipt: $located"
echo "ok   courier message locate finds second.bin's ledger entry and org B's receipt"
