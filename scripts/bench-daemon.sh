#!/usr/bin/env bash
# emberd vs Debian's containerd, same machine, same run:
#  (a) `ctr images import` + unpack of a ~200 MB Debian (debootstrap minbase) image,
#      median of 3, each on a fresh daemon root;
#  (b) Containers Create + Delete over gRPC, 1000 pairs, from 1 and from 16
#      concurrent clients (examples/bench_containers.rs), median of 3.
# Needs root, ctr and containerd (apt-get install containerd), debootstrap.
# Prints a markdown table for docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
OPS=${OPS:-1000}
CACHE=/var/cache/ember/bench
WORK=$(mktemp -d /var/tmp/ember-bench.XXXXXX)
PIDS=()
. scripts/bench-daemons.sh
trap stop_daemons EXIT

[ "$(id -u)" = 0 ] || { echo "needs root" >&2; exit 1; }
command -v debootstrap >/dev/null || apt-get install -y debootstrap
command -v containerd >/dev/null || apt-get install -y containerd

# The mirror apt uses.
MIRROR=$(grep -rhoE '^URIs: *\S+|^deb +\S+' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
    | awk '{print $2}' | grep -E '/debian/?$' | head -1 || true)
MIRROR=${MIRROR:-http://deb.debian.org/debian}

mkdir -p "$CACHE"
if [ ! -f "$CACHE/rootfs.tar" ]; then
    rm -rf "$CACHE/rootfs"
    debootstrap --variant=minbase bookworm "$CACHE/rootfs" "$MIRROR"
    tar --numeric-owner --sort=name -C "$CACHE/rootfs" -cf "$CACHE/rootfs.tar.part" .
    mv "$CACHE/rootfs.tar.part" "$CACHE/rootfs.tar"
fi

# A docker-archive image with the rootfs as one gzip layer.
ARCHIVE=$CACHE/debian-image.tar
if [ ! -f "$ARCHIVE" ]; then
    S=$WORK/staging
    mkdir -p "$S"
    DIFF=$(sha256sum "$CACHE/rootfs.tar" | cut -d' ' -f1)
    mkdir -p "$S/$DIFF"
    gzip -n -c "$CACHE/rootfs.tar" > "$S/$DIFF/layer.tar"
    CONFIG="{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{\"Cmd\":[\"bash\"]},\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"sha256:$DIFF\"]}}"
    CH=$(printf '%s' "$CONFIG" | sha256sum | cut -d' ' -f1)
    printf '%s' "$CONFIG" > "$S/$CH.json"
    printf '[{"Config":"%s.json","RepoTags":["docker.io/ember/bench-debian:latest"],"Layers":["%s/layer.tar"]}]' "$CH" "$DIFF" > "$S/manifest.json"
    tar -C "$S" -cf "$ARCHIVE.part" .
    mv "$ARCHIVE.part" "$ARCHIVE"
    rm -rf "$S"
fi

cargo build --release -p emberd --bin emberd --example bench_containers >&2
EMBERD=target/release/emberd
BENCH=target/release/examples/bench_containers

import_once() { # start-function name
    local d=$WORK/$2-$RANDOM
    "$1" "$d"
    sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
    local t0 t1
    t0=$(date +%s.%N)
    ctr -a "$SOCK" images import "$ARCHIVE" >/dev/null
    t1=$(date +%s.%N)
    ctr -a "$SOCK" snapshots ls | grep -q Committed
    stop
    rm -rf "$d" 2>/dev/null || true
    echo "$t1 - $t0" | bc -l
}

E_IMPORT=(); C_IMPORT=()
for _ in $(seq "$RUNS"); do
    E_IMPORT+=("$(import_once start_emberd emberd)")
    C_IMPORT+=("$(import_once start_containerd containerd)")
done
E_MED=$(printf '%s\n' "${E_IMPORT[@]}" | median)
C_MED=$(printf '%s\n' "${C_IMPORT[@]}" | median)

# Create+Delete pairs: one client (sequential), then 16 concurrent clients; each
# daemon fresh, the two alternating, median of $RUNS.
ops_once() { # start-function name concurrency
    local d=$WORK/ops-$2-$RANDOM
    "$1" "$d"
    "$BENCH" "$SOCK" "$OPS" "$3" | sed 's/.*ops_per_sec=//'
    stop
    rm -rf "$d" 2>/dev/null || true
}
declare -A OPS_E OPS_C
for conc in 1 16; do
    E=(); C=()
    for _ in $(seq "$RUNS"); do
        E+=("$(ops_once start_emberd emberd "$conc")")
        C+=("$(ops_once start_containerd containerd "$conc")")
    done
    OPS_E[$conc]="$(printf '%s\n' "${E[@]}" | median) (runs: ${E[*]})"
    OPS_C[$conc]="$(printf '%s\n' "${C[@]}" | median) (runs: ${C[*]})"
done
ratio() { echo "${1%% *} / ${2%% *}" | bc -l | xargs printf %.2f; }

SIZE=$(du -sm "$CACHE/rootfs.tar" | cut -f1)
LAYER=$(du -sm "$ARCHIVE" | cut -f1)
cat <<OUT
image: debootstrap --variant=minbase bookworm, ${SIZE} MB uncompressed, one gzip layer (archive ${LAYER} MB)
| benchmark | emberd | containerd $(containerd --version | awk '{print $3}') | ratio |
| --- | --- | --- | --- |
| \`ctr images import\` + unpack, median of $RUNS (s) | $(printf %.2f "$E_MED") (runs: $(printf '%.2f ' "${E_IMPORT[@]}")) | $(printf %.2f "$C_MED") (runs: $(printf '%.2f ' "${C_IMPORT[@]}")) | $(echo "$C_MED / $E_MED" | bc -l | xargs printf %.2f)x |
| Containers Create+Delete, $OPS pairs, 1 client (pairs/s, median of $RUNS) | ${OPS_E[1]} | ${OPS_C[1]} | $(ratio "${OPS_E[1]}" "${OPS_C[1]}")x |
| same, 16 concurrent clients | ${OPS_E[16]} | ${OPS_C[16]} | $(ratio "${OPS_E[16]}" "${OPS_C[16]}")x |
OUT
