#!/usr/bin/env bash
# Pull of a multi-layer image from a loopback docker-registry through the Transfer
# service (containerd 1.7's ctr, `images pull --local=false --platform linux/amd64`,
# which also unpacks into overlayfs): emberd vs containerd 1.7.24 (trixie) in the
# same run, each pull on a fresh daemon root, the two alternating, median of $RUNS.
# containerd 1.7's transfer service only speaks HTTPS to registries, so it pulls
# from a second registry serving the same storage over TLS (its CA trusted through
# SSL_CERT_FILE); emberd pulls from both (the CA from a hosts.toml); for reference, ctr's client-side pull (`--local`) from
# the plain-HTTP registry into containerd 1.7 is measured too, and so is the
# `ember pull` command line (the same Transfer calls) against both daemons.
# The image: a busybox layer and $LAYERS layers of $LAYER_MB MiB random data each.
# Needs root, /usr/bin/docker-registry, openssl, /opt/ember/trixie (scripts/trixie.sh).
# Prints a markdown table for docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-5}
LAYERS=${LAYERS:-8}
LAYER_MB=${LAYER_MB:-16}
T=/opt/ember/trixie/usr/bin
CTR17=$T/ctr
WORK=$(mktemp -d /var/tmp/ember-bench-transfer.XXXXXX)
PIDS=()
. scripts/bench-daemons.sh
trap stop_daemons EXIT

[ "$(id -u)" = 0 ] || { echo "needs root" >&2; exit 1; }
for b in /usr/bin/docker-registry "$CTR17" "$T/containerd" /bin/busybox openssl; do
    command -v "$b" >/dev/null || { echo "missing $b" >&2; exit 1; }
done

# PROFILE=debug measures the debug builds (no release build needed).
PROFILE=${PROFILE:-release}
if [ "$PROFILE" = release ]; then
    cargo build --release -p emberd --bin emberd -p ember-cli --bin ember >&2
else
    cargo build -p emberd --bin emberd -p ember-cli --bin ember >&2
fi
EMBERD=target/$PROFILE/emberd
EMBER=target/$PROFILE/ember

wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "no port $1" >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The image, as a docker archive.
S=$WORK/staging
mkdir -p "$S/rootfs/bin"
cp /bin/busybox "$S/rootfs/bin/"
for a in sh echo true cat; do ln -sf busybox "$S/rootfs/bin/$a"; done
LAYER_FILES=(); DIFFS=()
add_layer() { # dir
    local tarf=$S/l$RANDOM.tar
    tar --numeric-owner --sort=name -C "$1" -cf "$tarf" .
    local d; d=$(sha256sum "$tarf" | cut -d' ' -f1)
    mkdir -p "$S/$d"; mv "$tarf" "$S/$d/layer.tar"
    LAYER_FILES+=("\"$d/layer.tar\""); DIFFS+=("\"sha256:$d\"")
}
add_layer "$S/rootfs"
for i in $(seq "$LAYERS"); do
    mkdir -p "$S/data$i/data"
    head -c "$((LAYER_MB << 20))" /dev/urandom > "$S/data$i/data/blob$i"
    add_layer "$S/data$i"
done
CONFIG="{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{\"Cmd\":[\"sh\"]},\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[$(IFS=,; echo "${DIFFS[*]}")]}}"
CH=$(printf '%s' "$CONFIG" | sha256sum | cut -d' ' -f1)
printf '%s' "$CONFIG" > "$S/$CH.json"
printf '[{"Config":"%s.json","RepoTags":["docker.io/ember/bench-layers:latest"],"Layers":[%s]}]' \
    "$CH" "$(IFS=,; echo "${LAYER_FILES[*]}")" > "$S/manifest.json"
ARCHIVE=$WORK/image.tar
(cd "$S" && tar -cf "$ARCHIVE" manifest.json "$CH.json" */layer.tar)
rm -rf "$S"

# Two registries on one storage: plain HTTP and TLS.
STORE=$WORK/registry
mkdir -p "$STORE"
# A CA and a server certificate it signs (rustls refuses a CA as the server's).
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=bench CA" \
    -keyout "$WORK/ca-key.pem" -out "$WORK/ca.pem" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout "$WORK/key.pem" -out "$WORK/cert.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > "$WORK/ext.cnf"
openssl x509 -req -in "$WORK/cert.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca-key.pem" -CAcreateserial \
    -days 2 -extfile "$WORK/ext.cnf" -out "$WORK/cert.pem" 2>/dev/null
registry() { # port [tls]
    local cfg=$WORK/registry-$1.yml
    printf 'version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' "$STORE" "$1" > "$cfg"
    [ -n "${2:-}" ] && printf '  tls:\n    certificate: %s\n    key: %s\n' "$WORK/cert.pem" "$WORK/key.pem" >> "$cfg"
    docker-registry serve "$cfg" 2>"$cfg.log" & PIDS+=("$!")
    wait_port "$1"
}
PLAIN=$(free_port); registry "$PLAIN"
TLS=$(free_port); registry "$TLS" tls

CONTAINERD=$T/containerd
CONTAINERD_ENV="SSL_CERT_FILE=$WORK/ca.pem PATH=$T:$PATH"
# emberd finds the TLS registry's CA in a hosts directory.
mkdir -p "$WORK/certs.d/127.0.0.1:$TLS"
printf 'server = "https://127.0.0.1:%s"\nca = "%s"\n' "$TLS" "$WORK/ca.pem" > "$WORK/certs.d/127.0.0.1:$TLS/hosts.toml"
printf 'version = 2\n[plugins."io.containerd.grpc.v1.transfer"]\n  config_path = "%s"\n' "$WORK/certs.d" > "$WORK/emberd.toml"

# Push the image once (emberd's Transfer: import, then push).
start_emberd "$WORK/seed"
"$CTR17" -a "$SOCK" images import --local=false "$ARCHIVE" >/dev/null
"$CTR17" -a "$SOCK" images push --local=false "127.0.0.1:$PLAIN/ember/bench-layers:latest" \
    docker.io/ember/bench-layers:latest >/dev/null
stop
rm -rf "$WORK/seed" "$ARCHIVE"

ctr_pull() { # host [extra flags]
    "$CTR17" -a "$SOCK" images pull "${@:2}" --platform linux/amd64 "$1/ember/bench-layers:latest" >/dev/null
}
ember_pull() { # host [extra flags]
    "$EMBER" --address "$SOCK" pull -q "${@:2}" --platform linux/amd64 --snapshotter overlayfs "$1/ember/bench-layers:latest" >/dev/null
}
pull_once() { # start-function name puller host [extra flags]
    local d=$WORK/$2-$RANDOM
    "$1" "$d"
    sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
    local t0 t1
    t0=$(date +%s.%N)
    "$3" "$4" "${@:5}" || { echo "$2: the pull failed" >&2; exit 1; }
    t1=$(date +%s.%N)
    "$CTR17" -a "$SOCK" snapshots ls | grep -c Committed | grep -qx "$((LAYERS + 1))" ||
        { echo "$2: not every layer was unpacked" >&2; exit 1; }
    stop
    umount -R "$d"/root/* 2>/dev/null || true
    rm -rf "$d" 2>/dev/null || true
    echo "$t1 - $t0" | bc -l
}

E=(); ET=(); C=(); L=(); XE=(); XC=()
for _ in $(seq "$RUNS"); do
    E+=("$(pull_once start_emberd emberd ctr_pull "127.0.0.1:$PLAIN" --local=false)")
    ET+=("$(EMBERD_ARGS="--config $WORK/emberd.toml" pull_once start_emberd emberd-tls ctr_pull "127.0.0.1:$TLS" --local=false)")
    C+=("$(pull_once start_containerd containerd ctr_pull "127.0.0.1:$TLS" --local=false)")
    L+=("$(pull_once start_containerd containerd-local ctr_pull "127.0.0.1:$PLAIN" --local --plain-http)")
    XE+=("$(pull_once start_emberd ember-cli ember_pull "127.0.0.1:$PLAIN" --plain-http)")
    XC+=("$(pull_once start_containerd ember-cli-containerd ember_pull "127.0.0.1:$TLS")")
done
fmt() { printf '%.2f' "$1"; }
list() { local o=""; for x in "$@"; do o+="$(fmt "$x") "; done; echo "${o% }"; }
XEM=$(printf '%s\n' "${XE[@]}" | median); XCM=$(printf '%s\n' "${XC[@]}" | median)
EM=$(printf '%s\n' "${E[@]}" | median); ETM=$(printf '%s\n' "${ET[@]}" | median); CM=$(printf '%s\n' "${C[@]}" | median); LM=$(printf '%s\n' "${L[@]}" | median)
SIZE=$((LAYERS * LAYER_MB))
echo "| pull + unpack, $((LAYERS + 1)) layers, ${SIZE} MiB (s) | median | runs | vs emberd |"
echo "| --- | --- | --- | --- |"
echo "| emberd Transfer (HTTP) | $(fmt "$EM") | $(list "${E[@]}") | 1.00× |"
echo "| emberd Transfer (HTTPS) | $(fmt "$ETM") | $(list "${ET[@]}") | $(printf '%.2f' "$(echo "$ETM / $EM" | bc -l)")× |"
echo "| containerd 1.7.24 Transfer (HTTPS) | $(fmt "$CM") | $(list "${C[@]}") | $(printf '%.2f' "$(echo "$CM / $EM" | bc -l)")× |"
echo "| containerd 1.7.24, ctr --local pull (HTTP) | $(fmt "$LM") | $(list "${L[@]}") | $(printf '%.2f' "$(echo "$LM / $EM" | bc -l)")× |"
echo "| \`ember pull\` → emberd (HTTP) | $(fmt "$XEM") | $(list "${XE[@]}") | $(printf '%.2f' "$(echo "$XEM / $EM" | bc -l)")× |"
echo "| \`ember pull\` → containerd 1.7.24 (HTTPS) | $(fmt "$XCM") | $(list "${XC[@]}") | $(printf '%.2f' "$(echo "$XCM / $EM" | bc -l)")× |"
