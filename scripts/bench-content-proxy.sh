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
work=$(mktemp -d /tmp/ember-bench-content-proxy.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
  grep " $work" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# The image: a docker archive whose layer holds busybox and size_mb MiB of
# incompressible files of 1 MiB each. Each run gets its own image (a file named
# for the run), so that every import writes all of its blobs.
mkdir -p "$work/img/rootfs/bin" "$work/img/rootfs/data"
cp /bin/busybox "$work/img/rootfs/bin/"
for i in $(seq "$size_mb"); do head -c 1048576 /dev/urandom > "$work/img/rootfs/data/f$i"; done
make_image() {
  rm -f "$work/img/rootfs/run"*
  echo "$1" > "$work/img/rootfs/run$1"
  tar -C "$work/img/rootfs" -cf "$work/img/layer.tar" .
  /usr/bin/python3 - "$work/img" "$1" <<'PY'
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
cat > "$work/proxied.toml" <<TOML
version = 2
[proxy_plugins.blobs]
  type = "content"
  address = "$work/blobs.sock"
TOML
containerd --config "$work/containerd.toml" 2>"$work/containerd.log" & pids+=($!)
"$bin/emberd" --root "$work/e/root" --state "$work/e/state" --address "$work/e.sock" 2>"$work/e.log" & pids+=($!)
"$bin/ember-content-proxy" --root "$work/blobs" --address "$work/blobs.sock" 2>"$work/blobs.log" & pids+=($!)
"$bin/emberd" --config "$work/proxied.toml" --root "$work/p/root" --state "$work/p/state" --address "$work/p.sock" 2>"$work/p.log" & pids+=($!)
for s in c e p; do
  for _ in $(seq 100); do ctr -a "$work/$s.sock" version >/dev/null 2>&1 && break; sleep 0.1; done
done

now() { date +%s%N; }
declare -A times
for i in $(seq "$runs"); do
  for s in e p c; do
    make_image "$i-$s"
    sync
    t=$(now)
    ctr -a "$work/$s.sock" -n "bench$i" images import "$work/img/image.tar" >/dev/null
    times[$s]+="$(( ($(now) - t) / 1000000 )) "
  done
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
e=$(echo "${times[e]}" | median); p=$(echo "${times[p]}" | median); c=$(echo "${times[c]}" | median)
echo "| \`ctr images import\` + unpack, ${size_mb} MiB layer, median of $runs (ms) | time | runs | vs emberd built-in |"
echo "| --- | --- | --- | --- |"
echo "| emberd, built-in content store | $e | ${times[e]% } | 1.00x |"
echo "| emberd, ember-content-proxy over a unix socket | $p | ${times[p]% } | $(/usr/bin/python3 -c "print(f'{$p/$e:.2f}x')") |"
echo "| containerd $(containerd --version | awk '{print $3}') | $c | ${times[c]% } | $(/usr/bin/python3 -c "print(f'{$c/$e:.2f}x')") |"
