#!/usr/bin/env bash
# Cost of seccomp on a syscall-heavy process: `dd bs=1 count=N` (2N read/write
# calls) timed inside the container, with and without containerd's default
# profile (`ctr run --seccomp`), under io.containerd.runc.v2 (libseccomp's filter,
# on the host) and io.containerd.ember.v2 (the agent's filter, in the guest) in
# the same Debian containerd; median of RUNS (default 3). Absolute times of the
# two runtimes are not comparable (the guest runs under QEMU TCG here); the ratio
# with/without seccomp of each runtime is. Prints a markdown table for
# docs/benchmarks.md. Run as root after guest/build.sh.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
runs=${RUNS:-3}
count=${COUNT:-100000}
export PATH="$HOME/.cargo/bin:$PATH"
if [ -z "${BIN:-}" ]; then
  (cd "$repo" && cargo build --release --locked -q -p ember-shim -p ember-cli)
fi
bin=${BIN:-"$repo/target/release"}
WORK=$(mktemp -d /tmp/ember-bench-confine.XXXXXX)
guest=${EMBER_GUEST_DIR:-/var/lib/ember/guest}
cat > "$WORK/runtime.toml" <<TOML
kernel = "$guest/vmlinux"
initrd = "$guest/initramfs.cpio"
state_dir = "$WORK/shim-state"
memory_mib = 256
TOML
. "$repo/scripts/bench-daemons.sh"
PIDS=()
trap stop_daemons EXIT
export PATH="$bin:$PATH"
CONTAINERD_ENV="EMBER_RUNTIME_CONFIG=$WORK/runtime.toml" start_containerd "$WORK/c"
ember vm busybox-image "$WORK/bb.tar" --name "$image" 2>/dev/null
ctr -a "$SOCK" images import "$WORK/bb.tar" >/dev/null

script="a=\$(cut -d' ' -f1 /proc/uptime); dd if=/dev/zero of=/dev/null bs=1 count=$count 2>/dev/null; \
b=\$(cut -d' ' -f1 /proc/uptime); grep Seccomp: /proc/self/status; echo \$a \$b"
declare -A times
for i in $(seq "$runs"); do
  for rt in runc ember; do
    for sc in off on; do
      flags=()
      [ "$sc" = on ] && flags=(--seccomp)
      out=$(ctr -a "$SOCK" run --rm "${flags[@]}" --runtime "io.containerd.$rt.v2" "$image" "b-$rt-$sc-$i" sh -c "$script")
      want=0; [ "$sc" = on ] && want=2
      grep -q "Seccomp:.$want" <<<"$out" || { echo "$rt $sc: unexpected seccomp mode: $out" >&2; exit 1; }
      ms=$(tail -n 1 <<<"$out" | awk '{printf "%d", ($2 - $1) * 1000}')
      times[$rt-$sc]+="$ms "
    done
  done
done
{
  for rt in runc ember; do echo "$rt|${times[$rt-off]}|${times[$rt-on]}"; done
} | python3 -c '
import statistics, sys
print(f"| dd bs=1 count='"$count"' in the container, median of '"$runs"' (ms) | no seccomp | ctr run --seccomp | ratio with / without |")
print("| --- | --- | --- | --- |")
for line in sys.stdin:
    rt, off, on = line.strip().split("|")
    a, b = statistics.median(map(int, off.split())), statistics.median(map(int, on.split()))
    print(f"| io.containerd.{rt}.v2 | {a:.0f} ({off.strip()}) | {b:.0f} ({on.strip()}) | {b / max(a, 1):.2f}x |")
'
