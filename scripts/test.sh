#!/usr/bin/env bash
# test.sh - weft's whole test suite: formatting, lints, unit, integration and
# network-namespace tests (the latter need root; they say loudly when skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked --all-targets -- --test-threads=2
