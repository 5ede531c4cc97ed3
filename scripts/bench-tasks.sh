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
bin="$repo/target/release"
work=$(mktemp -d /tmp/ember-bench-tasks.XXXXXX)
pids=()
cleanup() {
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
declare -A times
for i in $(seq "$runs"); do
  for rt in runc ember; do
    for s in c e; do
      t=$(now)
      ctr -a "$work/$s.sock" run --rm --runtime "io.containerd.$rt.v2" "$image" "b-$rt-$i" true
      times[$s-$rt]+="$(( ($(now) - t) / 1000000 )) "
    done
  done
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "| \`ctr run --rm IMAGE true\`, median of $runs (ms) | emberd | containerd $(containerd --version | awk '{print $3}') | ratio containerd / emberd |"
echo "| --- | --- | --- | --- |"
for rt in runc ember; do
  e=$(echo "${times[e-$rt]}" | median); c=$(echo "${times[c-$rt]}" | median)
  echo "| io.containerd.$rt.v2 | $e (${times[e-$rt]% }) | $c (${times[c-$rt]% }) | $(python3 -c "print(f'{$c/$e:.2f}x')") |"
done
