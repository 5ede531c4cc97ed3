#!/usr/bin/env bash
# Re-import and exec: an image removed and imported again (`ctr images rm` +
# `ctr images import`) against emberd and against Debian's containerd; and
# `ctr tasks exec TASK true` into a running task of runc's shim and of Ember's
# microVM shim under the same containerd. Variants alternate, median of N (default 7).
# Prints markdown tables for docs/benchmarks.md. Run as root after guest/build.sh;
# BUILD=debug (default release) uses the debug binaries.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
runs=${RUNS:-7}
profile=${BUILD:-release}
export PATH="$HOME/.cargo/bin:$PATH"
flag=$([ "$profile" = release ] && echo --release || true)
(cd "$repo" && cargo build $flag --locked -q -p emberd -p ember-shim -p ember-cli)
WORK=$(mktemp -d /tmp/ember-bench-api.XXXXXX)
. "$repo/scripts/bench-daemons.sh"
PIDS=()
cleanup() {
  for s in c e; do
    for id in ex-runc ex-ember; do
      ctr -a "$WORK/$s/s.sock" tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
    done
  done
  sleep 1
  for s in c e; do
    for id in ex-runc ex-ember; do
      ctr -a "$WORK/$s/s.sock" tasks rm -f "$id" >/dev/null 2>&1 || true
    done
  done
  stop_daemons
}
trap cleanup EXIT
start_daemons "$repo/target/$profile"

ratio() { python3 -c "print(f'{$1/$2:.2f}x')"; }
declare -A times
for i in $(seq "$runs"); do
  for s in c e; do
    t=$(now)
    ctr -a "$WORK/$s/s.sock" images rm "$image" >/dev/null
    ctr -a "$WORK/$s/s.sock" images import "$WORK/bb.tar" >/dev/null
    times[$s]+="$(( ($(now) - t) / 1000000 )) "
  done
done
cv=$(containerd --version | awk '{print $3}')
echo "| \`ctr images rm\` + \`ctr images import\`, median of $runs (ms) | emberd | containerd $cv | ratio containerd / emberd |"
echo "| --- | --- | --- | --- |"
e=$(echo "${times[e]}" | median); c=$(echo "${times[c]}" | median)
echo "| busybox archive | $e (${times[e]% }) | $c (${times[c]% }) | $(ratio "$c" "$e") |"
echo

for rt in runc ember; do
  ctr -a "$WORK/c/s.sock" run -d --runtime "io.containerd.$rt.v2" "$image" "ex-$rt" sleep 600 >/dev/null
done
for i in $(seq "$runs"); do
  for rt in runc ember; do
    t=$(now)
    ctr -a "$WORK/c/s.sock" tasks exec --exec-id "e$i" "ex-$rt" true
    times[x-$rt]+="$(( ($(now) - t) / 1000000 )) "
  done
done
echo "| \`ctr tasks exec TASK true\` under containerd $cv, median of $runs (ms) | io.containerd.runc.v2 | io.containerd.ember.v2 | ratio ember / runc |"
echo "| --- | --- | --- | --- |"
r=$(echo "${times[x-runc]}" | median); m=$(echo "${times[x-ember]}" | median)
echo "| exec of \`true\` | $r (${times[x-runc]% }) | $m (${times[x-ember]% }) | $(ratio "$m" "$r") |"
