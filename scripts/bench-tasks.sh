#!/usr/bin/env bash
# Tasks: `ctr run --rm IMAGE true` against emberd and against Debian's containerd, in
# the same run, each with Debian's runc shim and with Ember's microVM shim; the four
# variants alternate, median of N (default 7). Prints a markdown table for
# docs/benchmarks.md. Run as root after guest/build.sh.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
runs=${RUNS:-7}
export PATH="$HOME/.cargo/bin:$PATH"
(cd "$repo" && cargo build --release --locked -q -p emberd -p ember-shim -p ember-cli)
WORK=$(mktemp -d /tmp/ember-bench-tasks.XXXXXX)
. "$repo/scripts/bench-daemons.sh"
PIDS=()
trap stop_daemons EXIT
start_daemons "$repo/target/release"

declare -A times
for i in $(seq "$runs"); do
  for rt in runc ember; do
    for s in c e; do
      t=$(now)
      ctr -a "$WORK/$s/s.sock" run --rm --runtime "io.containerd.$rt.v2" "$image" "b-$rt-$i" true
      times[$s-$rt]+="$(( ($(now) - t) / 1000000 )) "
    done
  done
done
echo "| \`ctr run --rm IMAGE true\`, median of $runs (ms) | emberd | containerd $(containerd --version | awk '{print $3}') | ratio containerd / emberd |"
echo "| --- | --- | --- | --- |"
for rt in runc ember; do
  e=$(echo "${times[e-$rt]}" | median); c=$(echo "${times[c-$rt]}" | median)
  echo "| io.containerd.$rt.v2 | $e (${times[e-$rt]% }) | $c (${times[c-$rt]% }) | $(python3 -c "print(f'{$c/$e:.2f}x')") |"
done
