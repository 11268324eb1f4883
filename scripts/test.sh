#!/usr/bin/env bash
# The test command: installs what the tests need (Synapse from PyPI), then
# runs every test: the pure core's unit tests and the integration tests,
# which start their own Synapse on a free port in a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."
# Formatting and lints first: a style slip fails before the long build.
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
scripts/install-synapse.sh
# Builds everything, the load generator included (so it cannot rot), but
# runs the tests only: the benchmark runs on request (cargo bench).
cargo build --all-targets --locked
cargo test --locked "$@"
