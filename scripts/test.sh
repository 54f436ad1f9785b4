#!/usr/bin/env bash
# test.sh - weft's whole test suite: formatting, lints, unit, integration and
# network-namespace tests (the latter need root; they say loudly when skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
# Unit, integration and netns tests (two at a time: the netns tests move real traffic).
cargo test --locked --lib --bins --tests -- --test-threads=2
# The criterion benchmarks, each run once as a smoke test (criterion's test mode).
cargo test --locked --benches
