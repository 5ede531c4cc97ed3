#!/usr/bin/env bash
# VMs with many containers, under Debian's containerd 1.6 with Ember's shim (no emberd):
#  (a) `ctr run --rm IMAGE true` into a running VM (kept up by a long-running container
#      that names it with the io.ember.vm.id annotation; every measured run names it too)
#      next to a fresh VM per run; the two alternate, median of N (default 7) each;
#  (b) host memory: the PSS (/proc/PID/smaps_rollup) of every VMM and shim process of
#      one VM running C idle containers (`sleep 3600`, default 16) next to C
#      one-container VMs, and how long starting the C containers took.
# Prints markdown tables for docs/benchmarks.md. Run as root after guest/build.sh
# (EMBER_GUEST_DIR picks another guest image; BIN a directory of built binaries instead
# of a release build).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
runs=${RUNS:-7}
count=${CONTAINERS:-16}
export PATH="$HOME/.cargo/bin:$PATH"
if [ -z "${BIN:-}" ]; then
  (cd "$repo" && cargo build --release --locked -q -p ember-shim -p ember-cli)
fi
bin=$(cd "${BIN:-"$repo/target/release"}" && pwd)
guest=${EMBER_GUEST_DIR:-/var/lib/ember/guest}
WORK=$(mktemp -d /tmp/ember-bench-vms.XXXXXX)
PIDS=()
. "$repo/scripts/bench-daemons.sh"
rt=io.containerd.ember.v2
ann=io.ember.vm.id

cat > "$WORK/runtime.toml" <<TOML
kernel = "$guest/vmlinux"
initrd = "$guest/initramfs.cpio"
state_dir = "$WORK/shim-state"
memory_mib = 256
log_level = "warn"
TOML
export PATH="$bin:$PATH"
CONTAINERD=/usr/bin/containerd CONTAINERD_ENV="EMBER_RUNTIME_CONFIG=$WORK/runtime.toml" \
  start_containerd "$WORK/c"
sock=$SOCK
c() { ctr -a "$sock" "$@"; }

# Removes every task and container, so that the shims and their VMs end.
clear_all() {
  local ids
  ids=$(c tasks ls -q 2>/dev/null || true)
  for id in $ids; do c tasks kill -s KILL "$id" >/dev/null 2>&1 || true; done
  for id in $ids; do c tasks delete -f "$id" >/dev/null 2>&1 || true; done
  for id in $(c containers ls -q 2>/dev/null || true); do c containers rm "$id" >/dev/null 2>&1 || true; done
}

# The shims of this containerd and their children (the VMMs): "PSS_KiB SHIMS VMMS".
pss() {
  python3 - "$sock" <<'PY'
import os, sys
sock = sys.argv[1].encode()
procs = {}
for p in filter(str.isdigit, os.listdir("/proc")):
    try:
        stat = open(f"/proc/{p}/stat").read()
        cmd = open(f"/proc/{p}/cmdline", "rb").read()
    except OSError:
        continue
    procs[int(p)] = (int(stat.rsplit(")", 1)[1].split()[1]), cmd)
shims = {p for p, (_, cmd) in procs.items() if b"containerd-shim-ember-v2" in cmd and sock in cmd}
chosen, grew = set(shims), True
while grew:
    more = {p for p, (pp, _) in procs.items() if pp in chosen} - chosen
    chosen |= more
    grew = bool(more)
total = 0
for p in chosen:
    try:
        for line in open(f"/proc/{p}/smaps_rollup"):
            if line.startswith("Pss:"):
                total += int(line.split()[1])
    except OSError:
        pass
print(total, len(shims), len(chosen - shims))
PY
}

finish() {
  clear_all
  # Shims of this containerd that outlived their containers.
  for p in $(pgrep -f "containerd-shim-ember-v2 .*$sock" || true); do kill "$p" 2>/dev/null || true; done
  stop_daemons
}
trap finish EXIT

ember vm busybox-image "$WORK/bb.tar" --name "$image" 2>/dev/null
c images import "$WORK/bb.tar" >/dev/null

# (a) Into a running VM vs a fresh VM, alternating.
c run -d --runtime "$rt" --annotation "$ann=bench" "$image" keeper sleep 3600 >/dev/null
c run --rm --runtime "$rt" --annotation "$ann=bench" "$image" warm-in true
c run --rm --runtime "$rt" "$image" warm-fresh true
into="" fresh=""
for i in $(seq "$runs"); do
  t=$(now)
  c run --rm --runtime "$rt" --annotation "$ann=bench" "$image" "in-$i" true
  into+="$(( ($(now) - t) / 1000000 )) "
  t=$(now)
  c run --rm --runtime "$rt" "$image" "fresh-$i" true
  fresh+="$(( ($(now) - t) / 1000000 )) "
done
clear_all
sleep 1

# (b) C idle containers in one VM, then in C VMs.
start_idle() { # PREFIX [ANNOTATION]
  local t k
  t=$(now)
  for k in $(seq "$count"); do
    # shellcheck disable=SC2086
    c run -d --runtime "$rt" ${2:+--annotation "$2"} "$image" "$1-$k" sleep 3600 >/dev/null
  done
  echo $(( ($(now) - t) / 1000000 ))
}
one_start=$(start_idle one "$ann=shared")
sleep 3
read -r one_pss one_shims one_vmms < <(pss)
clear_all
sleep 2
many_start=$(start_idle many)
sleep 3
read -r many_pss many_shims many_vmms < <(pss)
clear_all

accel=$(ember info --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["accelerator"])' 2>/dev/null || echo tcg)
python3 - "$runs" "$count" "$accel" "$into" "$fresh" \
  "$one_pss" "$one_shims" "$one_vmms" "$one_start" \
  "$many_pss" "$many_shims" "$many_vmms" "$many_start" <<'PY'
import statistics, sys
runs, count, accel, into, fresh = sys.argv[1:6]
count = int(count)
one = list(map(int, sys.argv[6:10]))
many = list(map(int, sys.argv[10:14]))
mi, mf = statistics.median(map(int, into.split())), statistics.median(map(int, fresh.split()))
print(f"| `ctr run --rm IMAGE true`, io.containerd.ember.v2 ({accel}), median of {runs} | ms | runs (ms) |")
print("| --- | --- | --- |")
print(f"| into a running VM (`--annotation io.ember.vm.id=bench`) | {mi:.0f} | {into.strip()} |")
print(f"| fresh VM per run | {mf:.0f} | {fresh.strip()} |")
print(f"| ratio fresh / into | {mf / mi:.1f}x | |")
print()
print(f"| {count} idle containers (`sleep 3600`) | one VM | {count} VMs | ratio |")
print("| --- | --- | --- | --- |")
mib = lambda k: k / 1024
print(f"| PSS of the VMM and shim processes | {mib(one[0]):.0f} MiB | {mib(many[0]):.0f} MiB | {many[0] / max(one[0], 1):.1f}x |")
print(f"| PSS per container | {mib(one[0]) / count:.1f} MiB | {mib(many[0]) / count:.1f} MiB | |")
print(f"| processes (shims + VMMs) | {one[1]} + {one[2]} | {many[1]} + {many[2]} | |")
print(f"| time to start all {count} (`ctr run -d`, one after another) | {one[3] / 1000:.1f} s | {many[3] / 1000:.1f} s | {many[3] / max(one[3], 1):.1f}x |")
PY
