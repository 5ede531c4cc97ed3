#!/usr/bin/env bash
# Networking benchmark under Debian's containerd 1.6: a busybox httpd container on a
# CNI bridge (bridge + host-local, `ctr run --cni`), in a microVM
# (io.containerd.ember.v2, tc-redirect-tap into virtio-net) and under runc
# (io.containerd.runc.v2), both on the same bridge in the same run. Measured from a
# client in the bridge's namespace: the download of a 64 MiB file (curl, median of
# $RUNS) and the ping round trip (busybox ping, $PINGS pings, 0.2 s apart).
# Everything runs inside a network namespace made here (ember-b-<pid>), never on the
# host's own interfaces. Needs root, containerd, ctr, curl, busybox, the CNI plugins
# in /usr/lib/cni, and a guest whose agent configures networks.
# BIN: a directory with a built containerd-shim-ember-v2 (default: a release build).
# Prints a markdown table for docs/benchmarks.md.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
runs=${RUNS:-5}
pings=${PINGS:-20}
[ "$(id -u)" = 0 ] || { echo "needs root" >&2; exit 1; }
for b in containerd ctr curl busybox ip tc; do
  command -v "$b" >/dev/null || { echo "missing $b" >&2; exit 1; }
done
[ -x /usr/lib/cni/bridge ] || { echo "missing /usr/lib/cni/bridge (apt-get install containernetworking-plugins)" >&2; exit 1; }
export PATH="$HOME/.cargo/bin:$PATH"
if [ -z "${BIN:-}" ]; then
  (cd "$repo" && cargo build --release --locked -q -p ember-shim -p ember-guest --examples)
fi
bin=${BIN:-$repo/target/release}
work=$(mktemp -d /tmp/ember-bench-net.XXXXXX)
ns=ember-b-$$
sock=$work/c.sock
cleanup() {
  for id in web-runc web-ember; do
    ctr -a "$sock" task kill -s SIGKILL "$id" >/dev/null 2>&1 || true
  done
  sleep 1
  for id in web-runc web-ember; do
    ctr -a "$sock" task delete --force "$id" >/dev/null 2>&1 || true
    ctr -a "$sock" containers rm "$id" >/dev/null 2>&1 || true
  done
  [ -n "${cpid:-}" ] && kill "$cpid" 2>/dev/null && wait "$cpid" 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "/var/lib/cni/networks/$ns"
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
  address = "$sock"
TOML
PATH="$bin:$PATH" EMBER_RUNTIME_CONFIG="$work/runtime.toml" \
  containerd --config "$work/config.toml" 2>"$work/containerd.log" &
cpid=$!
for _ in $(seq 100); do ctr -a "$sock" version >/dev/null 2>&1 && break; sleep 0.1; done
image=docker.io/ember/busybox:latest
if [ -x "$bin/examples/busybox-archive" ]; then
  "$bin/examples/busybox-archive" "$work/bb.tar" "$image"
else
  (cd "$repo" && cargo run --release --locked -q -p ember-guest --example busybox-archive -- "$work/bb.tar" "$image")
fi
ctr -a "$sock" images import "$work/bb.tar" >/dev/null

# The bridge and its CNI network, in the benchmark's own namespace.
ip netns add "$ns"
ip -n "$ns" link set lo up
ip -n "$ns" link add br0 type bridge
ip -n "$ns" addr add 10.88.90.1/24 dev br0
ip -n "$ns" link set br0 up
mkdir -p "$work/cni" /etc/cni/net.d /opt/cni/bin
cat > "$work/cni/10-bench.conflist" <<JSON
{"cniVersion": "1.0.0", "name": "$ns", "plugins": [{"type": "bridge", "bridge": "br0",
 "isGateway": true, "ipam": {"type": "host-local", "subnet": "10.88.90.0/24",
 "routes": [{"dst": "0.0.0.0/0"}]}}]}
JSON
# ctr runs the CNI plugins itself, from go-cni's default paths: bind-mounted in the
# private mount namespace `ip netns exec` gives it.
ctr_cni() {
  ip netns exec "$ns" sh -c "mount --bind $work/cni /etc/cni/net.d && mount --bind /usr/lib/cni /opt/cni/bin && exec ctr -a $sock \"\$@\"" sh "$@"
}
in_ns() { ip netns exec "$ns" "$@"; }

serve='mkdir -p /www && busybox dd if=/dev/urandom of=/www/big bs=1M count=64 2>/dev/null && touch /www/ready && exec busybox httpd -f -p 80 -h /www'
declare -A addr
for rt in runc ember; do
  ctr_cni run -d --cni --runtime "io.containerd.$rt.v2" "$image" "web-$rt" sh -c "$serve" >/dev/null
  for _ in $(seq 300); do
    a=$(ctr -a "$sock" task exec --exec-id a$RANDOM "web-$rt" busybox ip -4 -o addr show eth0 2>/dev/null | awk '{print $4}' | cut -d/ -f1)
    [ -n "$a" ] && ctr -a "$sock" task exec --exec-id r$RANDOM "web-$rt" test -e /www/ready 2>/dev/null && break
    sleep 0.5
  done
  [ -n "$a" ] || { echo "web-$rt got no address" >&2; exit 1; }
  addr[$rt]=$a
done

declare -A mbs rtt sums
for rt in runc ember; do
  sums[$rt]=$(ctr -a "$sock" task exec --exec-id s$RANDOM "web-$rt" busybox sha256sum /www/big | cut -d' ' -f1)
done
for rt in runc ember; do
  speeds=()
  for _ in $(seq "$runs"); do
    got=$(in_ns curl -sSf --max-time 600 -o "$work/dl" -w '%{speed_download}' "http://${addr[$rt]}/big")
    [ "$(sha256sum "$work/dl" | cut -d' ' -f1)" = "${sums[$rt]}" ] || { echo "$rt: the download differs" >&2; exit 1; }
    speeds+=("$(echo "$got / 1048576" | bc -l)")
  done
  mbs[$rt]=$(printf '%s\n' "${speeds[@]}" | sort -n | sed -n "$(( (runs + 1) / 2 ))p")
  rtt[$rt]=$(in_ns busybox ping -q -c "$pings" -i 0.2 "${addr[$rt]}" | awk -F/ '/round-trip/ {print $4}')
done

f2() { printf '%.2f' "$1"; }
accel=$(grep -ho 'accel=[A-Za-z]*' "$work"/shim-state/*/shim.log 2>/dev/null | head -1 | cut -d= -f2)
echo "| busybox httpd on a CNI bridge (ctr run --cni) | 64 MiB download (MiB/s, median of $runs) | ping RTT (ms, avg of $pings) |"
echo "| --- | --- | --- |"
echo "| io.containerd.runc.v2 | $(f2 "${mbs[runc]}") | $(f2 "${rtt[runc]}") |"
echo "| io.containerd.ember.v2 (QEMU microvm${accel:+, $accel}, tc-redirect-tap → virtio-net) | $(f2 "${mbs[ember]}") | $(f2 "${rtt[ember]}") |"
echo "| ember / runc | $(f2 "$(echo "${mbs[ember]} / ${mbs[runc]}" | bc -l)")× | $(f2 "$(echo "${rtt[ember]} / ${rtt[runc]}" | bc -l)")× |"
