#!/usr/bin/env bash
# Installs Ember on a fresh Debian 12 (as root) and runs a container in a microVM
# through Debian's containerd:
#  - Debian packages (QEMU, containerd, kernel source, ...) and the guest image
#    (kernel cached by its inputs, initramfs with ember-agent);
#  - `ember` and `containerd-shim-ember-v2` into /usr/local/bin, where containerd
#    finds the runtime io.containerd.ember.v2 without any configuration;
#  - containerd is started if none answers on /run/containerd/containerd.sock;
#  - the busybox demo image is imported and run with `ctr run --runtime io.containerd.ember.v2`.
# With --no-run only the installation is done.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
"$repo/scripts/deps.sh"
export PATH="$HOME/.cargo/bin:$PATH"
"$repo/guest/build.sh"
(cd "$repo" && cargo build --release --locked -q -p ember-cli -p ember-shim)
install -m 0755 "$repo/target/release/ember" /usr/local/bin/ember
install -m 0755 "$repo/target/release/containerd-shim-ember-v2" /usr/local/bin/containerd-shim-ember-v2
echo "installed: /usr/local/bin/ember /usr/local/bin/containerd-shim-ember-v2" >&2
[ "${1:-}" = "--no-run" ] && exit 0

sock=/run/containerd/containerd.sock
if ! ctr -a "$sock" version >/dev/null 2>&1; then
  if command -v systemctl >/dev/null 2>&1 && systemctl start containerd 2>/dev/null; then :; else
    echo "starting containerd (log: /var/log/ember-containerd.log)" >&2
    nohup containerd >/var/log/ember-containerd.log 2>&1 &
  fi
  for _ in $(seq 100); do ctr -a "$sock" version >/dev/null 2>&1 && break; sleep 0.2; done
fi
image=docker.io/ember/busybox:latest
if ! ctr -a "$sock" images ls -q | grep -qx "$image"; then
  tmp=$(mktemp -d)
  ember vm busybox-image "$tmp/busybox.tar" --name "$image"
  ctr -a "$sock" images import "$tmp/busybox.tar" >/dev/null
  rm -rf "$tmp"
fi
ember info
echo "+ ctr run --rm --runtime io.containerd.ember.v2 $image hello sh -c '...'" >&2
ctr -a "$sock" run --rm --runtime io.containerd.ember.v2 "$image" "hello-$$" \
  sh -c 'echo "hello from a microVM: $(uname -r) (host: '"$(uname -r)"')"; cat /etc/os-release'
