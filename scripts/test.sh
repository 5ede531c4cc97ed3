#!/usr/bin/env bash
# Installs whatever is missing and runs Ember's whole test suite: formatting, lints,
# unit tests and the integration tests that boot real microVMs under QEMU.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
"$repo/scripts/deps.sh"
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TERM_COLOR=never
echo "== guest image" >&2
"$repo/guest/build.sh"
echo "== format and lints" >&2
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -q -- -D warnings
echo "== tests" >&2
before=$(pgrep -c -f 'qemu-system-x86_64 -name ember-' || true)
cargo test --workspace --locked -- --test-threads=2
echo "== Go client tests (containerd 1.6's client against containerd and emberd)" >&2
"$repo/scripts/go-test.sh"
after=$(pgrep -c -f 'qemu-system-x86_64 -name ember-' || true)
if [ "${after:-0}" -gt "${before:-0}" ]; then
  echo "tests left QEMU processes behind:" >&2
  pgrep -a -f 'qemu-system-x86_64 -name ember-' >&2
  exit 1
fi
echo "all tests passed" >&2
