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
