#!/usr/bin/env bash
# `docker run --rm IMAGE true` through Debian's dockerd 20.10 on emberd and on
# Debian's containerd, the same run: one dockerd per daemon (own data root, exec
# root, pid file and socket, started in a network namespace made here, containers
# with --network none, runc runtime), the two alternating, median of $RUNS.
# Needs root, dockerd and docker (apt-get install docker.io), containerd.
# EMBERD=path uses that emberd binary instead of building a release one.
# Prints a markdown table for docs/benchmarks.md.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
runs=${RUNS:-15}
export PATH="$HOME/.cargo/bin:$PATH"
[ "$(id -u)" = 0 ] || { echo "needs root" >&2; exit 1; }
if [ -z "${EMBERD:-}" ]; then
  (cd "$repo" && cargo build --release --locked -q -p emberd -p ember-cli)
  EMBERD=$repo/target/release/emberd
fi
ember=${EMBER:-$(dirname "$EMBERD")/ember}
work=$(mktemp -d /tmp/ember-bench-clients.XXXXXX)
netns=ember-bench-clients-$$
ip netns add "$netns"
pids=()
cleanup() {
  set +e
  # dockerds first, then the daemons under them; polled, not waited for.
  for p in $(printf '%s\n' "${pids[@]}" | tac); do
    kill "$p" 2>/dev/null
    for _ in $(seq 200); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
  done
  grep " $work" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null
  ip netns del "$netns" 2>/dev/null
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
containerd --config "$work/containerd.toml" 2>"$work/containerd.log" & pids+=($!)
"$EMBERD" --root "$work/e/root" --state "$work/e/state" --address "$work/e.sock" 2>"$work/emberd.log" & pids+=($!)
for s in c e; do
  for _ in $(seq 100); do [ -S "$work/$s.sock" ] && break; sleep 0.1; done
done
# `ip netns exec` would mount a fresh /sys without the cgroup mounts dockerd
# needs: only the network namespace is entered.
for s in c e; do
  mkdir -p "$work/d$s"
  nsenter --net="/run/netns/$netns" dockerd --containerd="$work/$s.sock" \
    --data-root "$work/d$s/data" --exec-root "$work/d$s/exec" --pidfile "$work/d$s/pid" \
    -H "unix://$work/d$s/docker.sock" --bridge=none --iptables=false --ip-masq=false \
    --ip6tables=false 2>"$work/d$s/log" & pids+=($!)
done
docker() { DOCKER_CONFIG="$work/client" /usr/bin/docker -H "unix://$work/d$1/docker.sock" "${@:2}"; }
for s in c e; do
  for _ in $(seq 300); do docker "$s" version >/dev/null 2>&1 && break; sleep 0.2; done
done
image=docker.io/ember/busybox:latest
"$ember" vm busybox-image "$work/bb.tar" --name "$image" 2>/dev/null
for s in c e; do docker "$s" load -i "$work/bb.tar" >/dev/null; done

now() { date +%s%N; }
declare -A times
# One run each first, not counted (page cache, first container).
for s in c e; do docker "$s" run --rm --network none ember/busybox true; done
for i in $(seq "$runs"); do
  for s in c e; do
    t=$(now)
    docker "$s" run --rm --network none ember/busybox true
    times[$s]+="$(( ($(now) - t) / 1000000 )) "
  done
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
e=$(echo "${times[e]}" | median); c=$(echo "${times[c]}" | median)
echo "| \`docker run --rm busybox true\` via dockerd $(dockerd --version | awk '{print $3}' | tr -d ,), median of $runs (ms) | on emberd | on containerd $(containerd --version | awk '{print $3}') | containerd / emberd |"
echo "| --- | --- | --- | --- |"
echo "| runc | $e (${times[e]% }) | $c (${times[c]% }) | $(python3 -c "print(f'{$c/$e:.2f}x')") |"
