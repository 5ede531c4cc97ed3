# Sourced by the benchmarks that compare emberd with containerd: private daemons,
# each on a directory of its own (root, state, socket DIR/s.sock, log DIR/log), all
# under $WORK. The caller sets WORK and a `PIDS` array and traps `stop_daemons` on
# exit. EMBERD names the emberd binary (default: emberd on PATH; EMBERD_ARGS: more
# arguments for it); CONTAINERD names the containerd binary (default: containerd on
# PATH) and CONTAINERD_ENV extra environment for it (`VAR=value ...`).
image=docker.io/ember/busybox:latest

now() { date +%s%N; }
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

wait_sock() { for _ in $(seq 200); do [ -S "$1" ] && return 0; sleep 0.05; done; echo "no socket $1" >&2; exit 1; }

# Waits for the socket, then for the daemon behind it to answer.
wait_daemon() {
    wait_sock "$1"
    for _ in $(seq 100); do ctr -a "$1" version >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "no daemon answers on $1" >&2; exit 1
}

start_emberd() { # DIR -> socket path in SOCK, pid in DPID
    mkdir -p "$1"
    # shellcheck disable=SC2086
    "${EMBERD:-emberd}" --root "$1/root" --state "$1/state" --address "$1/s.sock" --log-level warn ${EMBERD_ARGS:-} 2>"$1/log" &
    DPID=$!; PIDS+=("$DPID"); SOCK=$1/s.sock; wait_daemon "$SOCK"
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
    DPID=$!; PIDS+=("$DPID"); SOCK=$1/s.sock; wait_daemon "$SOCK"
}

# Stops the daemon started last.
stop() { kill "$DPID"; wait "$DPID" 2>/dev/null || true; }

# Both daemons for a whole run, with the binaries of $1 first on PATH (so that they
# find its shims): containerd on $WORK/c, emberd on $WORK/e (their sockets
# $WORK/{c,e}/s.sock), the busybox test image ($image, archive $WORK/bb.tar)
# imported into both.
start_daemons() { # BIN
    export PATH="$1:$PATH"
    start_containerd "$WORK/c"
    start_emberd "$WORK/e"
    ember vm busybox-image "$WORK/bb.tar" --name "$image" 2>/dev/null
    for s in c e; do ctr -a "$WORK/$s/s.sock" images import "$WORK/bb.tar" >/dev/null; done
}

# Stops all daemons, unmounts what is left under $WORK and removes it.
stop_daemons() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    grep " $WORK" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    rm -rf "$WORK"
}
