#!/usr/bin/env bash
# The test command: installs what the tests need (Synapse from PyPI), then
# runs every test: the pure core's unit tests and the integration tests,
# which start their own Synapse on a free port in a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-synapse.sh
cargo build --all-targets --locked
cargo test --locked --all-targets "$@"
