#!/usr/bin/env bash
# Benchmark of VM templates under Debian's containerd, in one run:
#  1. `ctr run --rm IMAGE true`, median of N (default 7): runc, Ember restoring from a
#     template (the default), Ember booting (templates = false); the shim's breakdown.
#  2. Host memory per idle VM (PSS of the VMM, so pages shared between VMs count
#     once per sharer) for COUNT (default 20) idle containers, each in its own VM:
#     booted VMs, clones (jailed VMMs: RAM loaded from the template's state), and
#     clones of unjailed VMMs (RAM mapped privately from the template's file).
# Prints markdown tables for docs/benchmarks.md. Run as root after guest/build.sh.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
runs=${RUNS:-7}
count=${COUNT:-20}
export PATH="$HOME/.cargo/bin:$PATH"
(cd "$repo" && cargo build --release --locked -q -p ember-shim -p ember-cli)
bin="$repo/target/release"
work=$(mktemp -d /tmp/ember-bench-templates.XXXXXX)
c() { ctr -a "$work/c.sock" "$@"; }
cleanup() {
  for id in $(c tasks ls -q 2>/dev/null); do c tasks delete --force "$id" >/dev/null 2>&1 || true; done
  for id in $(c containers ls -q 2>/dev/null); do c containers rm "$id" >/dev/null 2>&1 || true; done
  [ -n "${cpid:-}" ] && kill "$cpid" 2>/dev/null && wait "$cpid" 2>/dev/null || true
  grep " $work" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
guest=${EMBER_GUEST_DIR:-/var/lib/ember/guest}
base="kernel = \"$guest/vmlinux\"
initrd = \"$guest/initramfs.cpio\"
state_dir = \"$work/shim-state\"
template_dir = \"$work/templates\"
memory_mib = 256"
config() { printf '%s\n%s\n' "$base" "$*" > "$work/runtime.toml"; }
config ""
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
for _ in $(seq 100); do c version >/dev/null 2>&1 && break; sleep 0.1; done
image=docker.io/ember/busybox:latest
(cd "$repo" && cargo run --release --locked -q -p ember-guest --example busybox-archive -- "$work/bb.tar" "$image")
c images import "$work/bb.tar" >/dev/null

now() { date +%s%N; }
med() { printf '%s\n' "$@" | sort -n | sed -n "$(( ($# + 1) / 2 ))p"; }
run_ms() { local t; t=$(now); c run --rm --runtime "$1" "$image" "$2" true; echo $(( ($(now) - t) / 1000000 )); }
# Warm-ups: the template of the default shape, runc's first run.
run_ms io.containerd.ember.v2 warm >/dev/null
run_ms io.containerd.runc.v2 warm-runc >/dev/null
runc=(); restored=(); booted=()
for i in $(seq "$runs"); do
  runc+=("$(run_ms io.containerd.runc.v2 "r$i")")
  config ""
  restored+=("$(run_ms io.containerd.ember.v2 "e$i")")
  config "templates = false"
  booted+=("$(run_ms io.containerd.ember.v2 "b$i")")
done
config ""
m_runc=$(med "${runc[@]}"); m_rest=$(med "${restored[@]}"); m_boot=$(med "${booted[@]}")

# Idle VMs: PSS of each VMM process.
pss_of_vmms() {
  local total=0 n=0
  for p in $(pgrep -f "qemu-system-x86_64.*$work" || true); do
    v=$(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0)
    total=$((total + v)); n=$((n + 1))
  done
  echo "$n $total"
}
idle_set() { # id prefix, label, config lines
  local name=$1 label=$2; shift 2
  config "$@"
  local t; t=$(now)
  for i in $(seq "$count"); do
    c run -d --runtime io.containerd.ember.v2 "$image" "$name-$i" sleep 3600 >/dev/null
  done
  local started=$(( ($(now) - t) / 1000000 ))
  sleep 5
  read -r n total < <(pss_of_vmms)
  echo "| $label | $n | $((total / n / 1024)) MiB | $((total / 1024)) MiB | $started ms |"
  for i in $(seq "$count"); do
    c tasks kill -s SIGKILL "$name-$i" >/dev/null 2>&1 || true
  done
  sleep 2
  for i in $(seq "$count"); do
    c tasks delete "$name-$i" >/dev/null 2>&1 || c tasks delete --force "$name-$i" >/dev/null 2>&1 || true
    c containers rm "$name-$i" >/dev/null 2>&1 || true
  done
}
rows=$(
  idle_set boot "booted" "templates = false"
  idle_set clone "clones, jailed VMMs (default)" ""
  # The unjailed shape's template is built by its first start.
  config "[jailer]
enabled = false"
  run_ms io.containerd.ember.v2 warm-unjailed >/dev/null
  idle_set open "clones, unjailed VMMs (RAM file shared)" "[jailer]
enabled = false"
)

breakdown=$(python3 - "$work/timings.jsonl" <<'PY'
import json, re, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(tpl, key):
    pre = "e" if tpl else "b"
    v = [r[key] for r in rows if r.get("phase") == "create" and re.fullmatch(pre + r"\d+", r["id"])
         and key in r]
    return statistics.median(v) if v else float("nan")
for label, key in [("VMM up (restored: state loaded)", "vmm_ready_ms"),
                   ("agent answers", "agent_ready_ms"),
                   ("VM ready (clone: identity set)", "identity_ready_ms"),
                   ("rootfs hand-over", "rootfs_ms"),
                   ("container create in the guest", "agent_create_ms"),
                   ("whole Create", "create_total_ms")]:
    print(f"| {label} | {med(True, key):.0f} ms | {med(False, key):.0f} ms |")
d = lambda pre: statistics.median([r["teardown_ms"] for r in rows if r.get("phase") == "delete"
                                   and re.fullmatch(pre + r"\d+", r["id"])] or [float("nan")])
print(f"| Delete (teardown of the VM) | {d('e'):.0f} ms | {d('b'):.0f} ms |")
PY
)
echo "| \`ctr run --rm IMAGE true\`, median of $runs | ms | / runc |"
echo "| --- | --- | --- |"
echo "| io.containerd.runc.v2 | $m_runc | 1.0x |"
echo "| ember, restored from a template (default) | $m_rest | $(python3 -c "print(f'{$m_rest/$m_runc:.1f}x')") |"
echo "| ember, booted (templates = false) | $m_boot | $(python3 -c "print(f'{$m_boot/$m_runc:.1f}x')") |"
echo
echo "| Create breakdown (shim timings, medians) | restored | booted |"
echo "| --- | --- | --- |"
echo "$breakdown"
echo
echo "| $count idle VMs (\`sleep\`), 256 MiB each | VMs | PSS per VMM | PSS total | $count starts |"
echo "| --- | --- | --- | --- | --- |"
echo "$rows"
