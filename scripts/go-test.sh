#!/usr/bin/env bash
# Runs the Go tests under tests/go: containerd's own 1.6 Go client (Debian's
# golang-github-containerd-containerd-dev, GOPATH mode) driving a private
# containerd and emberd side by side; any difference between the two fails.
# Builds emberd and the Ember shim first. Extra arguments go to `go test`.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --locked -q -p emberd -p ember-shim --bins --manifest-path "$repo/Cargo.toml"
target=$(cargo metadata --format-version 1 --no-deps --manifest-path "$repo/Cargo.toml" |
  /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
gopath=$(mktemp -d /tmp/ember-gopath.XXXXXX)
trap 'rm -rf "$gopath"' EXIT
cd "$repo/tests/go"
EMBER_BIN_DIR="$target/debug" GO111MODULE=off GOFLAGS= GOPATH="$gopath:/usr/share/gocode" \
  GOCACHE="${GOCACHE:-/var/cache/ember/go-build}" \
  go test -count=1 -timeout 8m "$@" .
