#!/usr/bin/env bash
# Configuring a guest NIC (rename, MAC, MTU, IPv4 and IPv6 addresses, three routes, up):
# the agent's ConfigureNetwork (rtnetlink) against the same steps as iproute2 commands,
# both in a network namespace made for the run (the agent runs on the host there, as in
# crates/ember-agent/tests/host_network.rs). Medians of 20 rounds, a fresh veth each.
# Usage: scripts/bench-net-guest.sh   (root)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test -q --release -p ember-agent --test host_network bench_configure_network -- \
  --ignored --nocapture --test-threads=1 2>&1 | grep -E "^BENCH|panicked|error" || true
