#!/usr/bin/env bash
# Builds the Ember guest: the kernel (cached by its inputs, see build-kernel.sh) and an
# initramfs whose /init is the statically linked ember-agent. Installs both into
# $EMBER_GUEST_DIR (default /var/lib/ember/guest) and prints their paths.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
dest=${EMBER_GUEST_DIR:-/var/lib/ember/guest}
mkdir -p "$dest"

vmlinux=$("$here/build-kernel.sh")
kdir=$(dirname "$vmlinux")

echo "building ember-agent (static)" >&2
(cd "$repo" && RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release --locked -q -p ember-agent --target x86_64-unknown-linux-gnu >&2)
agent="$repo/target/x86_64-unknown-linux-gnu/release/ember-agent"
if ! ldd "$agent" 2>&1 | grep -qE "statically linked|not a dynamic executable"; then
  echo "ember-agent is not statically linked" >&2
  exit 1
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{dev,proc,sys,run,tmp,mnt}
cp "$agent" "$stage/init"
# The kernel opens /dev/console for init's stdio before anything is mounted.
mknod -m 600 "$stage/dev/console" c 5 1
mknod -m 666 "$stage/dev/null" c 1 3
(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) > "$dest/initramfs.cpio.tmp"
mv "$dest/initramfs.cpio.tmp" "$dest/initramfs.cpio"
cp "$vmlinux" "$dest/vmlinux.tmp" && mv "$dest/vmlinux.tmp" "$dest/vmlinux"
cp "$kdir/release" "$dest/kernel-release"
cp "$kdir/config" "$dest/kernel-config"
echo "kernel:    $dest/vmlinux ($(cat "$dest/kernel-release"))"
echo "initramfs: $dest/initramfs.cpio"
