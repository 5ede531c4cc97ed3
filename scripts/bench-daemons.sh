# Sourced by the benchmarks that compare emberd with Debian's containerd: starts both
# as private instances under $work (containerd on $work/c.sock, emberd on
# $work/e.sock) with the binaries of $bin first on PATH, and imports the busybox test
# image ($image) into both. The caller sets work, bin and a `pids` array, and stops
# what `pids` holds on exit (see stop_daemons).
image=docker.io/ember/busybox:latest

start_daemons() {
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
  ember vm busybox-image "$work/bb.tar" --name "$image" 2>/dev/null
  for s in c e; do ctr -a "$work/$s.sock" images import "$work/bb.tar" >/dev/null; done
}

# Stops the daemons, unmounts what is left under $work and removes it.
stop_daemons() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
  grep " $work" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$work"
}

now() { date +%s%N; }
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# Lower-level helpers: one private daemon on a directory each. Need EMBERD (the emberd
# binary; EMBERD_ARGS: more arguments for it) and the array PIDS (processes to stop on
# exit); CONTAINERD names the containerd binary (default: containerd on PATH) and
# CONTAINERD_ENV extra environment for it (`VAR=value ...`).
wait_sock() { for _ in $(seq 200); do [ -S "$1" ] && return 0; sleep 0.05; done; echo "no socket $1" >&2; exit 1; }

start_emberd() { # DIR -> socket path in SOCK, pid in DPID
    mkdir -p "$1"
    # shellcheck disable=SC2086
    "$EMBERD" --root "$1/root" --state "$1/state" --address "$1/s.sock" --log-level warn ${EMBERD_ARGS:-} 2>"$1/log" &
    DPID=$!; PIDS+=("$DPID"); SOCK=$1/s.sock; wait_sock "$SOCK"
}

start_containerd() { # DIR -> socket path in SOCK, pid in DPID
    mkdir -p "$1"
    cat > "$1/config.toml" <<CFG
version = 2
root = "$1/root"
state = "$1/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$1/s.sock"
[ttrpc]
  address = "$1/t.sock"
CFG
    # shellcheck disable=SC2086
    env ${CONTAINERD_ENV:-} "${CONTAINERD:-containerd}" --config "$1/config.toml" 2>"$1/log" &
    DPID=$!; PIDS+=("$DPID"); SOCK=$1/s.sock; wait_sock "$SOCK"
}

stop() { kill "$DPID"; wait "$DPID" 2>/dev/null || true; }

