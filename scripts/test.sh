#!/usr/bin/env bash
# test.sh - weft's whole test suite: formatting, lints, unit, integration and
# network-namespace tests (the latter need root; they say loudly when skipped),
# and a bounded fuzz pass.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
# The fuzzer is not among --all-targets (it is `test = false`): lint it by name.
cargo clippy --locked --test fuzz -- -D warnings
# Unit, integration and netns tests (two at a time: the netns tests move real traffic).
cargo test --locked --lib --bins --tests -- --test-threads=2
# The fuzzer's bounded, seeded pass: 10^6 inputs per entry point, saved
# regressions first (docs/fuzzing.md).
cargo test --locked --profile fuzz --test fuzz
# The criterion benchmarks, each run once as a smoke test (criterion's test mode).
cargo test --locked --benches
