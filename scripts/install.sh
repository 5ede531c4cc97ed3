#!/usr/bin/env bash
# Installs Ember on a fresh Debian 12 (as root) and runs a container in a microVM:
#  - Debian packages (QEMU, containerd, kernel source, ...) and the guest image
#    (kernel cached by its inputs, initramfs with ember-agent);
#  - `emberd`, `ember` and `containerd-shim-ember-v2` into /usr/local/bin;
#  - emberd is started with its embedded defaults (socket /run/emberd/emberd.sock,
#    log /var/log/emberd.log) if none answers there;
#  - the busybox demo image is imported into emberd and run in a microVM with
#    `ember run --rm` (the default runtime, io.containerd.ember.v2);
#  - then the same image runs through Debian's own containerd with the same shim
#    (containerd is started if none answers on /run/containerd/containerd.sock).
# With --no-run only the installation is done.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
"$repo/scripts/deps.sh"
export PATH="$HOME/.cargo/bin:$PATH"
"$repo/guest/build.sh"
(cd "$repo" && cargo build --release --locked -q -p emberd -p ember-cli -p ember-shim)
for b in emberd ember containerd-shim-ember-v2; do
  install -m 0755 "$repo/target/release/$b" "/usr/local/bin/$b"
done
echo "installed: /usr/local/bin/{emberd,ember,containerd-shim-ember-v2}" >&2
[ "${1:-}" = "--no-run" ] && exit 0

image=docker.io/ember/busybox:latest
# Imports the busybox demo image into the daemon on socket $1 unless it is there.
import_busybox() {
  if ! ctr -a "$1" images ls -q | grep -qx "$image"; then
    tmp=$(mktemp -d)
    ember vm busybox-image "$tmp/busybox.tar" --name "$image"
    ctr -a "$1" images import "$tmp/busybox.tar" >/dev/null
    rm -rf "$tmp"
  fi
}
# Starts `$2...` in the background unless a daemon answers on socket $1.
ensure_daemon() {
  local sock=$1 log=$2; shift 2
  if ! ctr -a "$sock" version >/dev/null 2>&1; then
    echo "starting $1 (log: $log)" >&2
    nohup "$@" >"$log" 2>&1 &
    for _ in $(seq 100); do ctr -a "$sock" version >/dev/null 2>&1 && break; sleep 0.2; done
  fi
}
hello='echo "hello from a microVM: $(uname -r) (host: '"$(uname -r)"')"; cat /etc/os-release'

ember info
esock=/run/emberd/emberd.sock
ensure_daemon "$esock" /var/log/emberd.log /usr/local/bin/emberd
import_busybox "$esock"
echo "+ ember run --rm $image sh -c '...'" >&2
ember --address "$esock" run --rm "$image" sh -c "$hello"

csock=/run/containerd/containerd.sock
if ! ctr -a "$csock" version >/dev/null 2>&1 && command -v systemctl >/dev/null 2>&1; then
  systemctl start containerd 2>/dev/null || true
fi
ensure_daemon "$csock" /var/log/ember-containerd.log containerd
import_busybox "$csock"
echo "+ ctr run --rm --runtime io.containerd.ember.v2 $image hello sh -c '...'   (Debian's containerd)" >&2
ctr -a "$csock" run --rm --runtime io.containerd.ember.v2 "$image" "hello-$$" sh -c "$hello"
