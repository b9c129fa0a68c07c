"""Global-ledger lag under load, sampled from every node's admin endpoint.

Usage: global_lag.py ADMIN_HOST:FIRST_PORT NODES DONE_FILE [LABEL]

Polls `/global` on every node every 100 ms. The Raft leader's global-ledger
task reports `lag_blocks`: certified blocks the partition clusters hold that
the global ledger does not yet. While DONE_FILE does not exist the load is
running; once it appears, the script waits (at most 60 s) until the leader
reports no lag, then prints the lag seen under load and how long the global
ledger took to catch up after the load stopped. Every loop is bounded.
"""

import json
import os
import sys
import time
import urllib.request


def poll(host, port):
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/global", timeout=2) as r:
            return json.load(r)
    except Exception:  # a node that is busy or gone is skipped this round
        return None


def leader_view(host, first, nodes):
    for i in range(nodes):
        body = poll(host, first + i)
        if body and body.get("task", {}).get("leading"):
            return body
    return None


def percentile(values, q):
    if not values:
        return 0
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main():
    host, first = sys.argv[1].rsplit(":", 1)
    first, nodes, done_file = int(first), int(sys.argv[2]), sys.argv[3]
    label = sys.argv[4] if len(sys.argv) > 4 else "courier"
    under_load = []
    start = time.monotonic()
    load_end = None
    caught_up = None
    messages = 0
    # At most 30 minutes of load plus 60 s of catch-up.
    while time.monotonic() - start < 1800:
        view = leader_view(host, first, nodes)
        now = time.monotonic()
        if load_end is None and os.path.exists(done_file):
            load_end = now
        if view is not None:
            lag = view["task"]["lag_blocks"]
            messages = sum(p["messages"] for p in view["partitions"])
            if load_end is None:
                under_load.append(lag)
            elif lag == 0:
                caught_up = now
                break
        if load_end is not None and now - load_end > 60:
            break
        time.sleep(0.1)
    catch_up = "n/a" if caught_up is None else f"{(caught_up - load_end) * 1000:.0f} ms"
    # Sampled every 100 ms: 0 means no lag was left at the first sample.
    print(
        f"{label}: global-ledger lag under load (leader's view, {len(under_load)} samples): "
        f"p50 {percentile(under_load, 0.5)} blocks, p99 {percentile(under_load, 0.99)}, "
        f"max {max(under_load, default=0)}; caught up {catch_up} after the load stopped; "
        f"{messages} messages in the global ledger"
    )
    return 0 if caught_up is not None else 1


if __name__ == "__main__":
    sys.exit(main())
