#!/usr/bin/env bash
# Set up .venv (CPU torch + oat-edge[all]) and run the whole test suite, slow tests included.
# Extra arguments go to pytest, e.g. ./test.sh -m "not slow" -x
set -euo pipefail
cd "$(dirname "$0")"
. scripts/setup_env.sh
python -m pytest "$@"
