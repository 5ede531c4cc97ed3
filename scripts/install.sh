#!/usr/bin/env bash
# Installs Ember on a fresh Debian 12 (as root): Debian packages, the guest image
# (kernel cached by its inputs, initramfs with ember-agent) and the binaries into
# /usr/local/bin. Then runs a container in a microVM, unless --no-run is given.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
"$repo/scripts/deps.sh"
export PATH="$HOME/.cargo/bin:$PATH"
"$repo/guest/build.sh"
(cd "$repo" && cargo build --release --locked -q -p ember-cli)
install -m 0755 "$repo/target/release/ember" /usr/local/bin/ember
echo "installed: /usr/local/bin/ember" >&2
if [ "${1:-}" != "--no-run" ]; then
  ember info
  echo "+ ember vm run -- sh -c 'uname -a; cat /etc/os-release; echo hello from a microVM'" >&2
  ember vm run --timings -- sh -c 'uname -a; cat /etc/os-release; echo hello from a microVM'
fi
