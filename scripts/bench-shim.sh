#!/usr/bin/env bash
# Benchmark of the shim under Debian's containerd: `ctr run --rm IMAGE true` with
# io.containerd.ember.v2 vs io.containerd.runc.v2 in the same containerd, median of N
# (default 5), the ember breakdown recorded by the shim, and the RSS of idle shims.
# Prints a markdown table for docs/benchmarks.md. Run as root after guest/build.sh.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
runs=${RUNS:-5}
export PATH="$HOME/.cargo/bin:$PATH"
(cd "$repo" && cargo build --release --locked -q -p ember-shim -p ember-cli)
bin="$repo/target/release"
work=$(mktemp -d /tmp/ember-bench-shim.XXXXXX)
cleanup() {
  for id in idle-ember idle-runc; do
    ctr -a "$work/c.sock" task delete --force "$id" >/dev/null 2>&1 || true
    ctr -a "$work/c.sock" containers rm "$id" >/dev/null 2>&1 || true
  done
  [ -n "${cpid:-}" ] && kill "$cpid" 2>/dev/null && wait "$cpid" 2>/dev/null || true
  grep " $work" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
guest=${EMBER_GUEST_DIR:-/var/lib/ember/guest}
cat > "$work/runtime.toml" <<TOML
kernel = "$guest/vmlinux"
initrd = "$guest/initramfs.cpio"
state_dir = "$work/shim-state"
memory_mib = 256
TOML
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
# The image: built by the project's own builder (through the test helper binary).
(cd "$repo" && cargo run --release --locked -q -p ember-guest --example busybox-archive -- "$work/bb.tar" "$image")
ctr -a "$work/c.sock" images import "$work/bb.tar" >/dev/null

now() { date +%s%N; }
declare -A med
for rt in runc ember; do
  times=()
  for i in $(seq "$runs"); do
    t=$(now)
    ctr -a "$work/c.sock" run --rm --runtime "io.containerd.$rt.v2" "$image" "b-$rt-$i" true
    times+=($(( ($(now) - t) / 1000000 )))
  done
  med[$rt]=$(printf '%s\n' "${times[@]}" | sort -n | sed -n "$(( (runs + 1) / 2 ))p")
done

# Idle RSS of one shim per runtime.
for rt in runc ember; do
  ctr -a "$work/c.sock" run -d --runtime "io.containerd.$rt.v2" "$image" "idle-$rt" sleep 600 >/dev/null
done
sleep 3
rss() { awk '/VmRSS/ {print $2}' /proc/"$1"/status; }
shim_pid() { pgrep -f "containerd-shim-$1-v2 .*$work/c.sock" | head -1; }
rss_runc=$(rss "$(shim_pid runc)")
rss_ember=$(rss "$(shim_pid ember)")
anon_ember=$(awk '/RssAnon/ {print $2}' /proc/"$(shim_pid ember)"/status)

breakdown=$(python3 - "$work/timings.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(phase, key):
    v = [r[key] for r in rows if r.get("phase") == phase and key in r]
    return statistics.median(v) if v else float("nan")
print(f"| ember: rootfs hand-over (mount + mkfs.ext4 -d of the snapshot) | {med('create','rootfs_ms'):.0f} ms |")
print(f"| ember: VMM process up | {med('create','vmm_ready_ms'):.0f} ms |")
print(f"| ember: VM boot to agent-ready (from VMM start) | {med('create','agent_ready_ms'):.0f} ms |")
print(f"| ember: whole Create (rootfs + boot + container create) | {med('create','create_total_ms'):.0f} ms |")
print(f"| ember: teardown (Delete: remove container, power-off) | {med('delete','teardown_ms'):.0f} ms |")
PY
)
echo "| \`ctr run --rm IMAGE true\`, median of $runs | value |"
echo "| --- | --- |"
echo "| io.containerd.runc.v2 | ${med[runc]} ms |"
echo "| io.containerd.ember.v2 (QEMU microvm, $(ember info --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["accelerator"])' 2>/dev/null || echo tcg)) | ${med[ember]} ms |"
echo "| ratio ember / runc | $(python3 -c "print(f'{${med[ember]}/${med[runc]}:.1f}x')") |"
echo "$breakdown"
echo "| idle shim RSS: containerd-shim-runc-v2 | $((rss_runc / 1024)).$(( (rss_runc % 1024) * 10 / 1024 )) MiB |"
echo "| idle shim RSS: containerd-shim-ember-v2 (anonymous) | $((rss_ember / 1024)).$(( (rss_ember % 1024) * 10 / 1024 )) MiB ($((anon_ember / 1024)).$(( (anon_ember % 1024) * 10 / 1024 )) MiB) |"
