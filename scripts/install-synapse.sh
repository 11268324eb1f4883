#!/usr/bin/env bash
# Installs Synapse from PyPI into .venv-synapse (once). Used by the test and
# dev commands; the tests' harness does the same if it finds none.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-synapse
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import synapse' 2>/dev/null; then
  exit 0
fi
echo "Installing Synapse from PyPI into $VENV (once, about a minute)..." >&2
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check 'matrix-synapse==1.163.*'
"$VENV/bin/python" -c 'import synapse; print("Synapse", synapse.__version__, "installed")' >&2
