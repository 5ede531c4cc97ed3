#!/usr/bin/env bash
# Read and write throughput of a 64 MiB file through a microVM's virtio-9p share, from the
# container's own rootfs (virtio-blk), and with runc on the host, under a private
# containerd 1.6 (the harness of crates/ember-shim/tests). Under TCG unless KVM works.
# Usage: scripts/bench-volumes.sh   (EMBER_GUEST_DIR picks the guest image; the shim
# is a debug build: it is not on the data path)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test -q -p ember-shim --test volumes bench_volume_throughput -- \
  --ignored --nocapture --test-threads=1 2>&1 | grep -E "^BENCH|panicked|error" || true
