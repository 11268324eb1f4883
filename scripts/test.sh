#!/usr/bin/env bash
# The test command: installs what the tests need (Synapse from PyPI,
# Chromium from Debian, the web page's npm packages), then
# runs every test: the pure core's unit tests and the integration tests,
# which start their own Synapse on a free port in a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."
# Formatting and lints first: a style slip fails before the long build.
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
scripts/install-synapse.sh
# The web chat's browser tests drive Debian's Chromium (a browser download
# fails on these machines) with playwright-core, and need the built page.
if ! command -v chromium >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi
(cd web && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build && npm test --silent)
# Builds everything, the load generator included (so it cannot rot), but
# runs the tests only: the benchmark runs on request (cargo bench).
cargo build --all-targets --locked
cargo test --locked "$@"
