#!/usr/bin/env bash
# `ember run --rm IMAGE true` next to `ctr run --rm IMAGE ID true`, both against the
# same private emberd, with Debian's runc shim and with Ember's microVM shim; the
# variants alternate, median of N (default 7). Prints a markdown table for
# docs/benchmarks.md. Run as root after guest/build.sh.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
runs=${RUNS:-7}
export PATH="$HOME/.cargo/bin:$PATH"
# BIN: a directory with already built binaries (e.g. target/debug) instead of a release build.
if [ -z "${BIN:-}" ]; then
  (cd "$repo" && cargo build --release --locked -q -p emberd -p ember-shim -p ember-cli)
fi
bin=${BIN:-"$repo/target/release"}
WORK=$(mktemp -d /tmp/ember-bench-cli-run.XXXXXX)
. "$repo/scripts/bench-daemons.sh"
PIDS=()
trap stop_daemons EXIT
start_daemons "$bin"
export EMBER_STATE_DIR="$WORK/cli"

declare -A times
for i in $(seq "$runs"); do
  for rt in runc ember; do
    t=$(now)
    ember --address "$WORK/e/s.sock" run --rm --runtime "io.containerd.$rt.v2" "$image" true
    times[ember-$rt]+="$(( ($(now) - t) / 1000000 )) "
    t=$(now)
    ctr -a "$WORK/e/s.sock" run --rm --runtime "io.containerd.$rt.v2" "$image" "b-$rt-$i" true
    times[ctr-$rt]+="$(( ($(now) - t) / 1000000 )) "
  done
done
# One table row per runtime: both medians, the runs, and how much slower ctr is.
{
  for rt in runc ember; do echo "$rt|${times[ember-$rt]}|${times[ctr-$rt]}"; done
} | python3 -c '
import statistics, sys
print(f"| run --rm IMAGE true on emberd, median of '"$runs"' (ms) | ember run | ctr run | ratio ctr / ember |")
print("| --- | --- | --- | --- |")
for line in sys.stdin:
    rt, e, c = line.strip().split("|")
    me, mc = statistics.median(map(int, e.split())), statistics.median(map(int, c.split()))
    print(f"| io.containerd.{rt}.v2 | {me:.0f} ({e.strip()}) | {mc:.0f} ({c.strip()}) | {mc / me:.2f}x |")
'
