#!/usr/bin/env bash
# Courier driven by kcat (librdkafka), default settings.
# Usage: kcat_compat.sh BOOTSTRAP
set -euo pipefail
boot=$1
topic=kcat-compat
fail() { echo "FAIL kcat: $*"; exit 1; }
ok() { echo "ok   kcat: $*"; }

seq 1 500 | sed 's/^/key-&:value-/' | kcat -b "$boot" -P -t "$topic" -K: || fail "produce"
ok "produce 500 keyed records (auto-created topic)"

n=$(kcat -b "$boot" -C -t "$topic" -o beginning -e -q | wc -l)
[ "$n" -eq 500 ] || fail "consume read $n of 500"
ok "consume 500 records from the beginning"

# Output is captured before grep -q reads it: grep stops at the first match,
# and the writer's SIGPIPE would fail the pipeline (pipefail) at random.
grep -q "topic \"$topic\" with 1 partitions" <<<"$(kcat -b "$boot" -L -t "$topic")" || fail "metadata"
ok "metadata lists the topic"

# A consumer group: read everything, commit, leave; a second run reads nothing new.
n=$(timeout 60 kcat -b "$boot" -G kcat-group -X auto.offset.reset=earliest -e -q "$topic" | wc -l)
[ "$n" -eq 500 ] || fail "group consumer read $n of 500"
n=$(timeout 60 kcat -b "$boot" -G kcat-group -X auto.offset.reset=earliest -e -q "$topic" | wc -l)
[ "$n" -eq 0 ] || fail "group resumed with $n records already committed"
ok "consumer group commits and resumes"

# Offsets by timestamp: every record is newer than the epoch.
grep -q "offset 0" <<<"$(kcat -b "$boot" -Q -t "$topic:0:1000")" || fail "offset query by time"
ok "offset lookup by timestamp"
echo "kcat: all checks passed"
