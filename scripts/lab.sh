#!/usr/bin/env bash
# lab.sh - weft on one machine, no etcd, no cluster: installs what it needs,
# builds weftd, and runs `weftd lab` (3 nodes in network namespaces on the
# embedded lease store, their leases and a live reachability matrix) until
# Ctrl-C. Extra arguments go to `weftd lab` (e.g. --nodes 5, --once).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo build --release --locked --bin weftd
exec target/release/weftd lab "$@"
