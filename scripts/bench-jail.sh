#!/usr/bin/env bash
# The VMM jail's cost: `ctr run --rm IMAGE true` through io.containerd.ember.v2 with
# the jailer on and off, interleaved in one run under a private containerd 1.6 (the
# shim reads its runtime configuration at each start, so the script flips
# `[jailer] enabled` between runs), median of N (default 5); and the memory of an idle
# VM's VMM (QEMU RSS) with and without the jail, plus the jail's own processes (the
# keeper's PSS). Prints a markdown table for docs/benchmarks.md. Run as root after
# guest/build.sh; under TCG unless KVM works. PROFILE=debug uses debug builds (the
# shim is not on the measured path: the VMM's start and the guest's boot are).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
runs=${RUNS:-5}
export PATH="$HOME/.cargo/bin:$PATH"
profile=${PROFILE:-release}
pflag=$([ "$profile" = release ] && echo --release || true)
(cd "$repo" && cargo build $pflag --locked -q -p ember-shim)
bin="$repo/target/$profile"
work=$(mktemp -d /tmp/ember-bench-jail.XXXXXX)
cleanup() {
  for id in idle-on idle-off; do
    ctr -a "$work/c.sock" task delete --force "$id" >/dev/null 2>&1 || true
    ctr -a "$work/c.sock" containers rm "$id" >/dev/null 2>&1 || true
  done
  [ -n "${cpid:-}" ] && kill "$cpid" 2>/dev/null && wait "$cpid" 2>/dev/null || true
  grep " $work" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
guest=${EMBER_GUEST_DIR:-/var/lib/ember/guest}
config() { # $1: true|false
  cat > "$work/runtime.toml" <<TOML
kernel = "$guest/vmlinux"
initrd = "$guest/initramfs.cpio"
state_dir = "$work/shim-state"
memory_mib = 256
[jailer]
enabled = $1
TOML
}
config true
cat > "$work/config.toml" <<TOML
version = 2
root = "$work/root"
state = "$work/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$work/c.sock"
TOML
PATH="$bin:$PATH" EMBER_RUNTIME_CONFIG="$work/runtime.toml" EMBER_SHIM_TIMINGS="$work/timings.jsonl" \
  containerd --config "$work/config.toml" 2>"$work/containerd.log" &
cpid=$!
for _ in $(seq 100); do ctr -a "$work/c.sock" version >/dev/null 2>&1 && break; sleep 0.1; done
image=docker.io/ember/busybox:latest
(cd "$repo" && cargo run $pflag --locked -q -p ember-guest --example busybox-archive -- "$work/bb.tar" "$image")
ctr -a "$work/c.sock" images import "$work/bb.tar" >/dev/null

now() { date +%s%N; }
on=(); off=()
# One warm-up run each, then interleaved pairs.
for mode in true false; do
  config $mode
  ctr -a "$work/c.sock" run --rm --runtime io.containerd.ember.v2 "$image" "warm-$mode" true
done
for i in $(seq "$runs"); do
  for mode in true false; do
    config $mode
    t=$(now)
    ctr -a "$work/c.sock" run --rm --runtime io.containerd.ember.v2 "$image" "b-$mode-$i" true
    ms=$(( ($(now) - t) / 1000000 ))
    if [ $mode = true ]; then on+=("$ms"); else off+=("$ms"); fi
  done
done
median() { printf '%s\n' "$@" | sort -n | sed -n "$(( ($# + 1) / 2 ))p"; }
# The shim's own timings of each Create, in run order: on, off, on, off, ...
breakdown=$(python3 - "$work/timings.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
rows = [r for r in rows if r.get("phase") == "create"]
on, off = rows[0::2], rows[1::2]
def med(rs, k):
    v = [r[k] for r in rs if k in r]
    return statistics.median(v) if v else float("nan")
for key, what in [("vmm_ready_ms", "VMM process up (jail made, VMM spawned)"),
                  ("agent_ready_ms", "VM boot to agent-ready"),
                  ("create_total_ms", "whole Create")]:
    a, b = med(on, key), med(off, key)
    print(f"| shim: {what}, median | {a:.0f} ms | {b:.0f} ms | {a/b:.3f} |")
PY
)
med_on=$(median "${on[@]}"); med_off=$(median "${off[@]}")

# Idle VMs, one per mode; their VMM pids from the shims' state.
for mode in true false; do
  config $mode
  name=idle-$([ $mode = true ] && echo on || echo off)
  ctr -a "$work/c.sock" run -d --runtime io.containerd.ember.v2 "$image" "$name" sleep 600 >/dev/null
done
sleep 5
kib() { awk -v k="$2" '$1 == k":" {print $2}' "$1"; }
rss_on=0; rss_off=0; keeper=0
for d in "$work"/shim-state/*/; do
  pid=$(cat "$d/vmm.pid")
  rss=$(kib /proc/"$pid"/status VmRSS)
  if [ -f "$d/vm/jail.json" ]; then
    rss_on=$rss
    ppid=$(kib /proc/"$pid"/status PPid)
    keeper=$(kib /proc/"$ppid"/smaps_rollup Pss)
  else
    rss_off=$rss
  fi
done
mib() { python3 -c "print(f'{$1/1024:.1f}')"; }
echo "| jailer (QEMU microvm, $runs runs each, interleaved) | on | off | on / off |"
echo "| --- | --- | --- | --- |"
echo "| \`ctr run --rm IMAGE true\`, median | $med_on ms | $med_off ms | $(python3 -c "print(f'{$med_on/$med_off:.3f}')") |"
echo "$breakdown"
echo "| idle VMM RSS (256 MiB guest) | $(mib "$rss_on") MiB | $(mib "$rss_off") MiB | $(python3 -c "print(f'{$rss_on/max($rss_off,1):.3f}')") |"
echo "| jail keeper PSS | $(mib "$keeper") MiB | - | |"
echo "runs on:  ${on[*]}" >&2
echo "runs off: ${off[*]}" >&2
