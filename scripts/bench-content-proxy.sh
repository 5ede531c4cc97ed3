#!/usr/bin/env bash
# Content proxy overhead: `ctr images import` (which unpacks) of a larger image
# (one layer of ~SIZE_MB MiB in many files, default 128) into emberd with its
# built-in content store, into emberd whose content store is ember-content-proxy
# behind a unix socket, and into Debian's containerd 1.6, in the same run; each
# import goes to a fresh namespace, the variants alternate, median of N (default 5).
# Prints a markdown table for docs/benchmarks.md. Run as root.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
runs=${RUNS:-5}
size_mb=${SIZE_MB:-128}
export PATH="$HOME/.cargo/bin:$PATH"
(cd "$repo" && cargo build --release --locked -q -p emberd)
bin="$repo/target/release"
WORK=$(mktemp -d /tmp/ember-bench-content-proxy.XXXXXX)
. "$repo/scripts/bench-daemons.sh"
PIDS=()
trap stop_daemons EXIT

# The image: a docker archive whose layer holds busybox and size_mb MiB of
# incompressible files of 1 MiB each. Each run gets its own image (a file named
# for the run), so that every import writes all of its blobs.
mkdir -p "$WORK/img/rootfs/bin" "$WORK/img/rootfs/data"
cp /bin/busybox "$WORK/img/rootfs/bin/"
for i in $(seq "$size_mb"); do head -c 1048576 /dev/urandom > "$WORK/img/rootfs/data/f$i"; done
make_image() {
  rm -f "$WORK/img/rootfs/run"*
  echo "$1" > "$WORK/img/rootfs/run$1"
  tar -C "$WORK/img/rootfs" -cf "$WORK/img/layer.tar" .
  /usr/bin/python3 - "$WORK/img" "$1" <<'PY'
import hashlib, json, os, sys, tarfile
d, run = sys.argv[1], sys.argv[2]
h = hashlib.sha256()
with open(os.path.join(d, "layer.tar"), "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
config = json.dumps({"architecture": "amd64", "os": "linux",
                     "config": {"Cmd": ["/bin/busybox", "true"]},
                     "rootfs": {"type": "layers", "diff_ids": ["sha256:" + h.hexdigest()]}}).encode()
cname = hashlib.sha256(config).hexdigest() + ".json"
manifest = json.dumps([{"Config": cname, "RepoTags": ["docker.io/ember/large:" + run],
                        "Layers": ["layer.tar"]}]).encode()
with tarfile.open(os.path.join(d, "image.tar"), "w") as t:
    for name, data in ((cname, config), ("manifest.json", manifest)):
        p = os.path.join(d, name)
        open(p, "wb").write(data)
        t.add(p, arcname=name)
    t.add(os.path.join(d, "layer.tar"), arcname="layer.tar")
PY
}

cat > "$WORK/proxied.toml" <<TOML
version = 2
[proxy_plugins.blobs]
  type = "content"
  address = "$WORK/blobs.sock"
TOML
EMBERD=$bin/emberd
start_containerd "$WORK/c"
start_emberd "$WORK/e"
"$bin/ember-content-proxy" --root "$WORK/blobs" --address "$WORK/blobs.sock" 2>"$WORK/blobs.log" & PIDS+=($!)
wait_sock "$WORK/blobs.sock"
EMBERD_ARGS="--config $WORK/proxied.toml" start_emberd "$WORK/p"

declare -A times
for i in $(seq "$runs"); do
  for s in e p c; do
    make_image "$i-$s"
    sync
    t=$(now)
    ctr -a "$WORK/$s/s.sock" -n "bench$i" images import "$WORK/img/image.tar" >/dev/null
    times[$s]+="$(( ($(now) - t) / 1000000 )) "
  done
done
e=$(echo "${times[e]}" | median); p=$(echo "${times[p]}" | median); c=$(echo "${times[c]}" | median)
echo "| \`ctr images import\` + unpack, ${size_mb} MiB layer, median of $runs (ms) | time | runs | vs emberd built-in |"
echo "| --- | --- | --- | --- |"
echo "| emberd, built-in content store | $e | ${times[e]% } | 1.00x |"
echo "| emberd, ember-content-proxy over a unix socket | $p | ${times[p]% } | $(/usr/bin/python3 -c "print(f'{$p/$e:.2f}x')") |"
echo "| containerd $(containerd --version | awk '{print $3}') | $c | ${times[c]% } | $(/usr/bin/python3 -c "print(f'{$c/$e:.2f}x')") |"
