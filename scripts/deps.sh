#!/usr/bin/env bash
# Installs what Ember needs on Debian 12, skipping what is already there.
set -euo pipefail
packages=(
  build-essential flex bison bc libelf-dev libssl-dev cpio xz-utils   # guest kernel build
  linux-source-6.1                                                    # guest kernel source
  qemu-system-x86 qemu-system-common                                  # the QEMU microvm backend; virtfs-proxy-helper serves a jailed QEMU's 9p share
  busybox-static e2fsprogs erofs-utils zstd gzip                      # guest and test root filesystems, layer compression
  protobuf-compiler pkg-config                                        # builds
  containerd runc                                                     # peers for tests and benchmarks
  docker.io docker-registry skopeo                                    # client compatibility: dockerd, a loopback registry
  golang-go golang-github-containerd-containerd-dev                   # Go tests with containerd's 1.6 client
  golang-github-opencontainers-go-digest-dev golang-github-opencontainers-image-spec-dev golang-github-containerd-typeurl-dev  # imported by the Go tests themselves
  python3-grpcio python3-grpc-tools                                   # Python gRPC client tests
  dnsmasq-base                                                        # DNS server of the network tests (in their namespaces)
  curl ca-certificates openssl
  iproute2 containernetworking-plugins                                # VM networks: ip/tc (taps, tc redirects); CNI bridge + host-local for ctr run --cni
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v cargo >/dev/null 2>&1; then
  echo "installing the Rust toolchain (rustup)" >&2
  curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy >&2
fi
# containerd 1.7 (its ctr and shims) from Debian trixie, unpacked aside, never installed
# over the system's packages.
"$(dirname "$0")/trixie.sh" containerd >/dev/null
# erofs-utils 1.8 (mkfs.erofs --tar, for layers straight to EROFS images) from trixie,
# with the C library and libraries it links, run through that C library's own loader.
"$(dirname "$0")/trixie.sh" erofs-utils libc6 libdeflate0 libxxhash0 liblz4-1 liblzma5 zlib1g libzstd1 libselinux1 libuuid1 libpcre2-8-0 >/dev/null
