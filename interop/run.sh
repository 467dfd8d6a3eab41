#!/usr/bin/env bash
# Interop: the shipped suites against private Dovecot and Postfix instances (Debian
# packages), held to interop/expected-failures.yaml. Run from anywhere, as root:
#
#   bash interop/run.sh [--jobs N] [--defaults]
#
# Installs the peers if missing (interop/install.sh), starts them on loopback high ports
# from a temporary directory, runs `mailharness check --target ... --fail-on must`, and
# exits 0 only when the scenarios that fail are exactly the listed ones (see
# docs/interop.md). Writes interop-results.json, interop-report.md and interop-check.log
# in the current directory.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"

bash "$repo/interop/install.sh"

# the project's environment: $PYTHON, else the active virtualenv (tox), else .venv
py="${PYTHON:-}"
if [ -z "$py" ]; then
    if [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
        py="$VIRTUAL_ENV/bin/python"
    else
        py="$repo/.venv/bin/python"
    fi
fi
exec "$py" "$repo/interop/run.py" "$@"
