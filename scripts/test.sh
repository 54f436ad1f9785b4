#!/usr/bin/env bash
# test.sh - weft's whole test suite: formatting, lints, unit, integration and
# network-namespace tests (the latter need root; they say loudly when skipped),
# the cluster tier on a real Kubernetes cluster, and a bounded fuzz pass.
set -euo pipefail
cd "$(dirname "$0")/.."
# Go (the cluster tier builds Kubernetes with it) where the machine installs it.
command -v go >/dev/null || PATH=$PATH:/usr/local/go/bin
scripts/deps.sh
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
# The fuzzer and the cluster tier are not among --all-targets (`test = false`): lint them by name.
cargo clippy --locked --test fuzz --test cluster -- -D warnings
# The Go test programs (cluster/): formatted and vetted.
unformatted=$(cd cluster && gofmt -l .)
[[ -z $unformatted ]] || { echo "gofmt: unformatted: $unformatted" >&2; exit 1; }
(cd cluster && go vet ./...)
# flanneld and flannel's CNI plugin, built from their modules (cached): the
# netns tests run the real flannel beside weft (netns-tests/flannel.rs).
scripts/cluster.sh build-flannel
# Unit, integration and netns tests (two at a time: the netns tests move real traffic).
cargo test --locked --lib --bins --tests -- --test-threads=2
# The cluster tier: weft installed from docker/weft.yaml on a real Kubernetes
# cluster built from source (scripts/cluster.sh; the first, cold build of
# Kubernetes and of the images is the slow part, both cached after).
cargo test --locked --test cluster
# The fuzzer's bounded, seeded pass: 10^6 inputs per entry point, saved
# regressions first (docs/fuzzing.md).
cargo test --locked --profile fuzz --test fuzz
# The criterion benchmarks, each run once as a smoke test (criterion's test mode).
cargo test --locked --benches
