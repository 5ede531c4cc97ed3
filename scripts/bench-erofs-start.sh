#!/usr/bin/env bash
# EROFS start: how long a container takes to run `true` in its own microVM under
# Debian's containerd when its snapshot is EROFS layers + a writable ext4 image
# (handed to the VM as drives, no copy) vs the overlayfs snapshotter's layout (the
# shim copies the merged tree into an ext4 image with mkfs.ext4 -d), for a busybox
# image and busybox plus $SIZES MiB of random data in layers of at most 256 MiB.
# Both rootfs layouts are made here exactly as the two snapshotters lay them out
# (the erofs one: layer.erofs beside each layer's fs/, rw.ext4 beside rw/, all
# mounted on the host as the snapshotter leaves them; overlayfs: plain directories)
# and given to containerd's Tasks API as the snapshotter's mounts would be, by
# examples/task-on-mounts (Create, Start, Wait, Delete). Preparing a snapshot
# (mkdir for overlayfs, a sparse mkfs.ext4 for erofs) is not timed: `ctr run`
# does it before the task exists. The two layouts alternate; median of $RUNS.
# Needs root, mkfs.erofs (erofs-utils), the guest image (guest/build.sh).
# Prints a markdown table for docs/benchmarks.md.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
runs=${RUNS:-5}
sizes=${SIZES:-"200 1024"}
PROFILE=${PROFILE:-release}
export PATH="$HOME/.cargo/bin:$PATH"
[ "$(id -u)" = 0 ] || { echo "needs root" >&2; exit 1; }
command -v mkfs.erofs >/dev/null || { echo "missing mkfs.erofs (apt-get install erofs-utils)" >&2; exit 1; }
flags=(--locked -q)
[ "$PROFILE" = release ] && flags+=(--release)
(cd "$repo" && cargo build "${flags[@]}" -p ember-shim --bin containerd-shim-ember-v2 --example task-on-mounts \
  && cargo build "${flags[@]}" -p ember-guest --example busybox-archive)
bin="$repo/target/$PROFILE"
drive="$bin/examples/task-on-mounts"
work=$(mktemp -d /var/tmp/ember-bench-erofs.XXXXXX)
cleanup() {
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
sock=$work/c.sock
for _ in $(seq 100); do ctr -a "$sock" version >/dev/null 2>&1 && break; sleep 0.1; done
image=docker.io/ember/busybox:latest
"$bin/examples/busybox-archive" "$work/bb.tar" "$image"
ctr -a "$sock" images import "$work/bb.tar" >/dev/null

# Layer trees: busybox, then the data layers of each size.
tree() { mkdir -p "$work/trees/$1"; echo "$work/trees/$1"; }
base=$(tree base)
mkdir -p "$base/bin" "$base/etc" "$base/proc" "$base/sys" "$base/dev" "$base/tmp"
cp /bin/busybox "$base/bin/"
for a in sh true cat; do ln -sf busybox "$base/bin/$a"; done
echo "root:x:0:0:root:/root:/bin/sh" > "$base/etc/passwd"
# The erofs snapshotter's committed layer: layer.erofs, mounted read-only at fs/.
erofs_layer() { # name tree
  local d=$work/erofs/snapshots/$1
  mkdir -p "$d/fs"
  mkfs.erofs --quiet "$d/layer.erofs" "$2" >/dev/null
  mount -t erofs -o ro,loop "$d/layer.erofs" "$d/fs"
  echo "$d/fs"
}
declare -A e_lower o_lower
e_base=$(erofs_layer base "$base")
e_lower[0]=$e_base; o_lower[0]=$base
for s in $sizes; do
  n=$(( (s + 255) / 256 )); per=$(( s / n ))
  e=""; o=""
  for i in $(seq "$n"); do
    t=$(tree "d$s-$i")
    mkdir -p "$t/data"
    dd if=/dev/urandom of="$t/data/part$i" bs=1M count="$per" status=none
    # Topmost first.
    e="$(erofs_layer "d$s-$i" "$t")${e:+:$e}"; o="$t${o:+:$o}"
  done
  e_lower[$s]=$e:$e_base; o_lower[$s]=$o:$base
done

run_erofs() { # id lowers
  local d=$work/erofs/snapshots/$1 t=$work/empty-$1
  mkdir -p "$d/rw" "$t/upper" "$t/work"
  mkfs.ext4 -q -F -E root_owner=0:0 -O ^has_journal -d "$t" "$d/rw.ext4" 1G >/dev/null
  mount -o loop "$d/rw.ext4" "$d/rw" >/dev/null
  ctr -a "$sock" containers create --runtime io.containerd.ember.v2 "$image" "$1" true >/dev/null
  "$drive" "$sock" "$1" overlay "lowerdir=$2" "upperdir=$d/rw/upper" "workdir=$d/rw/work"
  ctr -a "$sock" containers rm "$1" >/dev/null
  umount "$d/rw" 2>/dev/null || true
  rm -rf "$d" "$t"
}
run_overlay() { # id lowers
  local d=$work/overlay/snapshots/$1
  mkdir -p "$d/fs" "$d/work"
  ctr -a "$sock" containers create --runtime io.containerd.ember.v2 "$image" "$1" true >/dev/null
  "$drive" "$sock" "$1" overlay "lowerdir=$2" "upperdir=$d/fs" "workdir=$d/work"
  ctr -a "$sock" containers rm "$1" >/dev/null
  rm -rf "$d"
}
median() { printf '%s\n' "$@" | sort -n | sed -n "$(( ($# + 1) / 2 ))p"; }
declare -A total create
for s in 0 $sizes; do
  for kind in overlay erofs; do eval "t_${kind}=(); c_${kind}=()"; done
  for i in $(seq "$runs"); do
    for kind in overlay erofs; do
      if [ $kind = erofs ]; then lowers=${e_lower[$s]}; else lowers=${o_lower[$s]}; fi
      out=$("run_$kind" "b-$kind-$s-$i" "$lowers")
      read -r c r d <<<"$(tail -1 <<<"$out")"
      eval "t_${kind}+=($(( c + r + d ))); c_${kind}+=($c)"
    done
  done
  for kind in overlay erofs; do
    eval "total[$kind-$s]=\$(median \"\${t_${kind}[@]}\"); create[$kind-$s]=\$(median \"\${c_${kind}[@]}\")"
  done
done

label() { [ "$1" = 0 ] && echo "busybox (1 layer)" || echo "busybox + $1 MiB (+$(( ($1 + 255) / 256 )) data layer(s))"; }
echo "| image | overlayfs: Create | overlayfs: run \`true\` | erofs: Create | erofs: run \`true\` | erofs vs overlayfs | erofs vs erofs busybox |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for s in 0 $sizes; do
  python3 - "$(label "$s")" "${create[overlay-$s]}" "${total[overlay-$s]}" "${create[erofs-$s]}" "${total[erofs-$s]}" "${total[erofs-0]}" <<'PY'
import sys
name, oc, ot, ec, et, e0 = sys.argv[1], *map(float, sys.argv[2:])
print(f"| {name} | {oc:.0f} ms | {ot:.0f} ms | {ec:.0f} ms | {et:.0f} ms | {et/ot:.2f}x | {et/e0:.2f}x |")
PY
done
echo
# The shim's own record of the rootfs hand-over (mount + mkfs.ext4 -d for overlayfs;
# claim + drives for erofs) and of the agent's container create (the overlay
# assembled in the guest for erofs).
python3 - "$work/timings.jsonl" "$runs" $sizes <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"create"' in l]
sizes = ["0"] + sys.argv[3:]
print("| image | overlayfs: rootfs hand-over | erofs: rootfs hand-over | overlayfs: agent create | erofs: agent create |")
print("| --- | --- | --- | --- | --- |")
def med(kind, size, key):
    v = [r[key] for r in rows if r.get("id", "").startswith(f"b-{kind}-{size}-")]
    return statistics.median(v) if v else float("nan")
for s in sizes:
    name = "busybox" if s == "0" else f"busybox + {s} MiB"
    print(f"| {name} | {med('overlay', s, 'rootfs_ms'):.0f} ms | {med('erofs', s, 'rootfs_ms'):.0f} ms "
          f"| {med('overlay', s, 'agent_create_ms'):.0f} ms | {med('erofs', s, 'agent_create_ms'):.0f} ms |")
PY
echo
echo "(Create: containerd's Tasks.Create, in which the shim hands the rootfs over and boots the VM; run: Create + Start + Wait + Delete of \`true\`. Median of $runs, shim built $PROFILE.)"
