#!/usr/bin/env bash
# Import + unpack time of the erofs snapshotter against overlayfs, with Debian's
# ctr (`images import --snapshotter S` of a docker archive, uncompressed layers):
# emberd's erofs (layers written straight to EROFS by emberd's differ) and
# overlayfs, and Debian's containerd 1.6 with its own overlayfs and with Ember's
# erofs as a proxy snapshotter (containerd's differ writes into the writable image,
# Commit turns it into EROFS), each import on a fresh daemon root, median of $RUNS.
# Images: busybox; $MB200 MiB in 4 random-content layers; $MB1000 MiB in 4 layers.
# Then the disk 10 containers of the multi-layer image take (`ctr containers
# create`, each an active snapshot), allocated bytes (du -x) of the snapshotter root.
# Needs root, mkfs.erofs 1.8 (scripts/trixie.sh erofs-utils). PROFILE=release for
# release builds (default debug). Prints markdown tables for docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
MB200=${MB200:-200}
MB1000=${MB1000:-1000}
PROFILE=${PROFILE:-debug}
WORK=$(mktemp -d /var/tmp/ember-bench-erofs.XXXXXX)
PIDS=()
. scripts/bench-daemons.sh
trap stop_daemons EXIT
[ "$(id -u)" = 0 ] || { echo "needs root" >&2; exit 1; }

if [ "$PROFILE" = release ]; then
    cargo build --release -p emberd --bin emberd -p ember-snapshot --bin ember-snapshotter-proxy >&2
else
    cargo build -p emberd --bin emberd -p ember-snapshot --bin ember-snapshotter-proxy >&2
fi
EMBERD=target/$PROFILE/emberd
PROXY=target/$PROFILE/ember-snapshotter-proxy

# Docker archives: make_image NAME MIB (0: busybox only) LAYERS
make_image() {
    local name=$1 mib=$2 layers=$3 S=$WORK/staging-$1
    mkdir -p "$S/rootfs/bin"
    cp /bin/busybox "$S/rootfs/bin/"
    for a in sh echo true cat ls; do ln -sf busybox "$S/rootfs/bin/$a"; done
    local files=() diffs=()
    add() {
        local t=$S/l.tar
        tar --numeric-owner --sort=name -C "$1" -cf "$t" .
        local d; d=$(sha256sum "$t" | cut -d' ' -f1)
        mkdir -p "$S/$d"; mv "$t" "$S/$d/layer.tar"
        files+=("\"$d/layer.tar\""); diffs+=("\"sha256:$d\"")
        rm -rf "$1"
    }
    add "$S/rootfs"
    if [ "$mib" -gt 0 ]; then
        local per=$((mib / layers))
        for i in $(seq "$layers"); do
            mkdir -p "$S/d$i/data$i"
            # Files of 1..8 MiB, random content.
            local left=$per j=0
            while [ "$left" -gt 0 ]; do
                local n=$(( (j % 8) + 1 )); [ "$n" -gt "$left" ] && n=$left
                head -c "$((n << 20))" /dev/urandom > "$S/d$i/data$i/f$j"
                left=$((left - n)); j=$((j + 1))
            done
            add "$S/d$i"
        done
    fi
    local config="{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{\"Cmd\":[\"sh\"]},\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[$(IFS=,; echo "${diffs[*]}")]}}"
    local ch; ch=$(printf '%s' "$config" | sha256sum | cut -d' ' -f1)
    printf '%s' "$config" > "$S/$ch.json"
    printf '[{"Config":"%s.json","RepoTags":["docker.io/ember/%s:latest"],"Layers":[%s]}]' \
        "$ch" "$name" "$(IFS=,; echo "${files[*]}")" > "$S/manifest.json"
    (cd "$S" && tar -cf "$WORK/$name.tar" manifest.json "$ch.json" ./*/layer.tar)
    rm -rf "$S"
}
make_image busybox 0 0
make_image layers200 "$MB200" 4
make_image layers1g "$MB1000" 4

start_containerd_erofs() { # DIR: containerd with the erofs proxy snapshotter
    mkdir -p "$1"
    "$PROXY" --root "$1/erofs" --address "$1/erofs.sock" --type erofs --log-level warn 2>"$1/proxy.log" &
    PROXY_PID=$!; PIDS+=("$PROXY_PID"); wait_sock "$1/erofs.sock"
    cat > "$1/config.toml" <<CFG
version = 2
root = "$1/root"
state = "$1/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$1/s.sock"
[ttrpc]
  address = "$1/t.sock"
[proxy_plugins.erofs]
  type = "snapshot"
  address = "$1/erofs.sock"
CFG
    "${CONTAINERD:-containerd}" --config "$1/config.toml" 2>"$1/log" &
    DPID=$!; PIDS+=("$DPID"); SOCK=$1/s.sock; wait_daemon "$SOCK"
}

finish() { # DIR
    stop
    [ -n "${PROXY_PID:-}" ] && { kill "$PROXY_PID"; wait "$PROXY_PID" 2>/dev/null || true; PROXY_PID=; }
    grep " $1" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount 2>/dev/null || true
    rm -rf "$1"
}

import_once() { # start-fn snapshotter image -> seconds
    local d=$WORK/run-$RANDOM
    "$1" "$d"
    sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
    local t0 t1
    t0=$(date +%s.%N)
    ctr -a "$SOCK" images import --snapshotter "$2" "$WORK/$3.tar" >/dev/null
    t1=$(date +%s.%N)
    ctr -a "$SOCK" snapshots --snapshotter "$2" ls | grep -q Committed || { echo "$1 $2: nothing unpacked" >&2; exit 1; }
    finish "$d"
    echo "$t1 - $t0" | bc -l
}

fmt() { printf '%.2f' "$1"; }
echo "| import + unpack (s), median of $RUNS | busybox | ${MB200} MiB, 5 layers | ${MB1000} MiB, 5 layers |"
echo "| --- | --- | --- | --- |"
declare -A BASE
for cfg in "start_emberd erofs emberd-erofs" "start_emberd overlayfs emberd-overlayfs" \
           "start_containerd overlayfs containerd-1.6-overlayfs" "start_containerd_erofs erofs containerd-1.6-erofs-proxy"; do
    read -r fn sn label <<<"$cfg"
    row="| $label |"
    for img in busybox layers200 layers1g; do
        ts=()
        for _ in $(seq "$RUNS"); do ts+=("$(import_once "$fn" "$sn" "$img")"); done
        m=$(printf '%s\n' "${ts[@]}" | median)
        if [ "$label" = emberd-erofs ]; then BASE[$img]=$m; row+=" $(fmt "$m") |"
        else row+=" $(fmt "$m") ($(printf '%.2f' "$(echo "$m / ${BASE[$img]}" | bc -l)")×) |"; fi
    done
    echo "$row"
done

# Disk of 10 containers of the multi-layer image.
echo
echo "| 10 containers of the ${MB200} MiB image (du -x, MiB) | layers | + 10 containers | per container |"
echo "| --- | --- | --- | --- |"
for cfg in "start_emberd erofs io.containerd.snapshotter.v1.erofs" "start_emberd overlayfs io.containerd.snapshotter.v1.overlayfs"; do
    read -r fn sn dir <<<"$cfg"
    d=$WORK/disk-$sn
    "$fn" "$d"
    ctr -a "$SOCK" images import --snapshotter "$sn" "$WORK/layers200.tar" >/dev/null
    sync
    before=$(du -sx --block-size=1 "$d/root/$dir" | cut -f1)
    for i in $(seq 10); do
        ctr -a "$SOCK" containers create --snapshotter "$sn" docker.io/ember/layers200:latest "c$i" >/dev/null
    done
    sync
    after=$(du -sx --block-size=1 "$d/root/$dir" | cut -f1)
    mib() { echo "scale=1; $1 / 1048576" | bc -l; }
    echo "| emberd $sn | $(mib "$before") | $(mib "$((after - before))") | $(mib "$(( (after - before) / 10 ))") |"
    for i in $(seq 10); do ctr -a "$SOCK" containers rm "c$i" >/dev/null; done
    finish "$d"
done
