# Sourced by the benchmark scripts (after `set -euo pipefail`, with
# `bench_port_default` set): the settings every benchmark takes
# (COURIER_BENCH_RECORDS, COURIER_BENCH_ROUNDS, COURIER_BENCH_PORT,
# --short), a scratch directory with its results file, and the cleanup of
# the broker the script starts (its pid in `pid`) and of the directory.
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
records=${COURIER_BENCH_RECORDS:-100000}
rounds=${COURIER_BENCH_ROUNDS:-3}
if [ "${1:-}" = "--short" ]; then records=20000; rounds=1; shift; fi
data=$(mktemp -d)
results=$data/results.tsv
port=${COURIER_BENCH_PORT:-$bench_port_default}
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$data"; }
trap cleanup EXIT
# The median of a space-separated list of numbers, for the scripts' awk
# summaries: awk -F'\t' "$awk_median"' { ... median(list) ... }'
awk_median='
  function median(list,   n, a, i, j, t) {
    n = split(list, a, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }'
