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
bin="$repo/target/$profile"
work=$(mktemp -d /tmp/ember-bench-api.XXXXXX)
pids=()
cleanup() {
  for s in c e; do
    for id in ex-runc ex-ember; do
      ctr -a "$work/$s.sock" tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
    done
  done
  sleep 1
  for s in c e; do
    for id in ex-runc ex-ember; do
      ctr -a "$work/$s.sock" tasks rm -f "$id" >/dev/null 2>&1 || true
    done
  done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
  grep " $work" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
cat > "$work/containerd.toml" <<TOML
version = 2
root = "$work/c/root"
state = "$work/c/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$work/c.sock"
[ttrpc]
  address = "$work/c.ttrpc.sock"
TOML
export PATH="$bin:$PATH"
containerd --config "$work/containerd.toml" 2>"$work/containerd.log" & pids+=($!)
emberd --root "$work/e/root" --state "$work/e/state" --address "$work/e.sock" 2>"$work/emberd.log" & pids+=($!)
for s in c e; do
  for _ in $(seq 100); do ctr -a "$work/$s.sock" version >/dev/null 2>&1 && break; sleep 0.1; done
done
image=docker.io/ember/busybox:latest
ember vm busybox-image "$work/bb.tar" --name "$image" 2>/dev/null
for s in c e; do ctr -a "$work/$s.sock" images import "$work/bb.tar" >/dev/null; done

now() { date +%s%N; }
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ratio() { python3 -c "print(f'{$1/$2:.2f}x')"; }
declare -A times
for i in $(seq "$runs"); do
  for s in c e; do
    t=$(now)
    ctr -a "$work/$s.sock" images rm "$image" >/dev/null
    ctr -a "$work/$s.sock" images import "$work/bb.tar" >/dev/null
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
  ctr -a "$work/c.sock" run -d --runtime "io.containerd.$rt.v2" "$image" "ex-$rt" sleep 600 >/dev/null
done
for i in $(seq "$runs"); do
  for rt in runc ember; do
    t=$(now)
    ctr -a "$work/c.sock" tasks exec --exec-id "e$i" "ex-$rt" true
    times[x-$rt]+="$(( ($(now) - t) / 1000000 )) "
  done
done
echo "| \`ctr tasks exec TASK true\` under containerd $cv, median of $runs (ms) | io.containerd.runc.v2 | io.containerd.ember.v2 | ratio ember / runc |"
echo "| --- | --- | --- | --- |"
r=$(echo "${times[x-runc]}" | median); m=$(echo "${times[x-ember]}" | median)
echo "| exec of \`true\` | $r (${times[x-runc]% }) | $m (${times[x-ember]% }) | $(ratio "$m" "$r") |"
