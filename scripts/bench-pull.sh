#!/usr/bin/env bash
# `ember pull` on emberd vs Debian's `ctr pull` on Debian's containerd 1.6, both
# pulling (and unpacking into overlayfs) the same multi-layer image from a
# loopback docker-registry over plain HTTP. Each pull starts from an empty content
# store (a fresh daemon root), the two alternate, median of $RUNS.
# The image: a busybox layer and $LAYERS gzip layers of $LAYER_MB MiB random data
# each (about 200 MB by default), assembled as an OCI layout here and pushed by
# skopeo, so that neither side wrote it.
# Needs root, /usr/bin/{docker-registry,skopeo,containerd,ctr}, /bin/busybox.
# BIN: a directory with built emberd and ember (default: a release build here).
# Prints a markdown table for docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-5}
LAYERS=${LAYERS:-8}
LAYER_MB=${LAYER_MB:-24}
[ "$(id -u)" = 0 ] || { echo "needs root" >&2; exit 1; }
for b in /usr/bin/docker-registry /usr/bin/skopeo /usr/bin/containerd /usr/bin/ctr /bin/busybox; do
    [ -x "$b" ] || { echo "missing $b" >&2; exit 1; }
done
if [ -z "${BIN:-}" ]; then
    cargo build --release -p emberd --bin emberd -p ember-cli --bin ember >&2
fi
BIN=${BIN:-target/release}
EMBERD=$BIN/emberd
EMBER=$BIN/ember
CTR=/usr/bin/ctr
CONTAINERD=/usr/bin/containerd
WORK=$(mktemp -d /var/tmp/ember-bench-pull.XXXXXX)
PIDS=()
. scripts/bench-daemons.sh
trap stop_daemons EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "no port $1" >&2; exit 1; }

# The OCI layout.
L=$WORK/layout
mkdir -p "$L/blobs/sha256"
printf '{"imageLayoutVersion":"1.0.0"}' > "$L/oci-layout"
blob() { # file -> "digest size" (the file moved into the layout)
    local d s; d=$(sha256sum "$1" | cut -d' ' -f1); s=$(stat -c %s "$1")
    mv "$1" "$L/blobs/sha256/$d"; echo "$d $s"
}
LAYER_JSON=(); DIFFS=()
add_layer() { # dir
    local t=$WORK/layer.tar diff d s
    tar --numeric-owner --owner=0 --group=0 --sort=name --mtime=@0 -C "$1" -cf "$t" .
    diff=$(sha256sum "$t" | cut -d' ' -f1)
    gzip -1 -n "$t"
    read -r d s < <(blob "$t.gz")
    LAYER_JSON+=("{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$d\",\"size\":$s}")
    DIFFS+=("\"sha256:$diff\"")
    rm -rf "$1"
}
mkdir -p "$WORK/rootfs/bin"
cp /bin/busybox "$WORK/rootfs/bin/"
for a in sh echo true cat; do ln -sf busybox "$WORK/rootfs/bin/$a"; done
add_layer "$WORK/rootfs"
for i in $(seq "$LAYERS"); do
    mkdir -p "$WORK/data$i/data"
    head -c "$((LAYER_MB << 20))" /dev/urandom > "$WORK/data$i/data/blob$i"
    add_layer "$WORK/data$i"
done
printf '{"architecture":"amd64","os":"linux","config":{"Cmd":["sh"]},"rootfs":{"type":"layers","diff_ids":[%s]}}' \
    "$(IFS=,; echo "${DIFFS[*]}")" > "$WORK/config.json"
read -r CD CS < <(blob "$WORK/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[%s]}' \
    "$CD" "$CS" "$(IFS=,; echo "${LAYER_JSON[*]}")" > "$WORK/manifest.json"
read -r MD MS < <(blob "$WORK/manifest.json")
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"bench"}}]}' \
    "$MD" "$MS" > "$L/index.json"
BYTES=$(du -sb "$L/blobs" | cut -f1)

# The registry, and the image pushed into it by skopeo.
PORT=$(free_port)
printf 'version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' \
    "$WORK/registry" "$PORT" > "$WORK/registry.yml"
docker-registry serve "$WORK/registry.yml" 2>"$WORK/registry.log" & PIDS+=("$!")
wait_port "$PORT"
REF=127.0.0.1:$PORT/ember/bench-pull:latest
skopeo copy -q --dest-tls-verify=false "oci:$L:bench" "docker://$REF" >&2
rm -rf "$L"

ember_pull() { "$EMBER" --address "$SOCK" pull -q --plain-http --platform linux/amd64 --snapshotter overlayfs "$REF" >/dev/null; }
ctr_pull() { "$CTR" -a "$SOCK" images pull --plain-http --platform linux/amd64 --snapshotter overlayfs "$REF" >/dev/null; }
pull_once() { # start-function puller
    local d=$WORK/d-$RANDOM t0 t1
    EMBERD=$EMBERD CONTAINERD=$CONTAINERD "$1" "$d"
    t0=$(date +%s.%N)
    "$2" || { echo "$2: the pull failed" >&2; exit 1; }
    t1=$(date +%s.%N)
    "$CTR" -a "$SOCK" snapshots --snapshotter overlayfs ls | grep -c Committed | grep -qx "$((LAYERS + 1))" ||
        { echo "$2: not every layer was unpacked" >&2; exit 1; }
    stop
    grep " $d" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    rm -rf "$d"
    echo "$t1 - $t0" | bc -l
}

E=(); C=()
for _ in $(seq "$RUNS"); do
    E+=("$(pull_once start_emberd ember_pull)")
    C+=("$(pull_once start_containerd ctr_pull)")
done
fmt() { printf '%.2f' "$1"; }
list() { local o=""; for x in "$@"; do o+="$(fmt "$x") "; done; echo "${o% }"; }
EM=$(printf '%s\n' "${E[@]}" | median); CM=$(printf '%s\n' "${C[@]}" | median)
MB=$(( BYTES / 1000000 ))
echo "| pull + unpack, $((LAYERS + 1)) gzip layers, ${MB} MB (s) | median | runs | vs ember pull |"
echo "| --- | --- | --- | --- |"
echo "| \`ember pull\` → emberd | $(fmt "$EM") | $(list "${E[@]}") | 1.00× |"
echo "| \`ctr pull\` → containerd $("$CONTAINERD" --version | awk '{print $3}') (Debian) | $(fmt "$CM") | $(list "${C[@]}") | $(printf '%.2f' "$(echo "$CM / $EM" | bc -l)")× |"
