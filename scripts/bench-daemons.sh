# Sourced by the benchmark scripts: private daemons on a directory each.
# Needs EMBERD (the emberd binary; EMBERD_ARGS: more arguments for it) and the
# array PIDS (processes to stop on exit);
# CONTAINERD names the containerd binary (default: containerd on PATH) and
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

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
