#!/usr/bin/env bash
# GPU verification in one run (docs/gpu.md): install oat-edge into this machine's own
# Python without touching its torch, build the C++ extension, then scripts/gpu_check.py
# (tests, CUDA training, the torch CUDA backend, nccl, throughput, oat-edge bench).
#
#   scripts/gpu_check.sh OUT_DIR [gpu_check.py options, e.g. --quick --suite gpu]
#
# Environment: PYTHON (default python3), BUDGET_S (whole run, default 480), NO_INSTALL=1 (use the
# Python as it is: oat-edge already installed), WHEELHOUSE=DIR (install missing dependencies
# from these wheels, offline). Without a CUDA device the CUDA parts are recorded as skipped and
# the rest runs. Exit 0 when nothing failed, 1 when a section failed, 2 on a setup error.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
  echo "usage: scripts/gpu_check.sh OUT_DIR [gpu_check.py options]   (--help: python scripts/gpu_check.py --help)" >&2
  exit 2
fi
OUT=$1
shift
PYTHON=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-480}
START=$(date +%s)
mkdir -p "$OUT/logs" || { echo "gpu_check: cannot create $OUT" >&2; exit 2; }
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
say() { printf '[gpu_check.sh] %s\n' "$*"; }

if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "gpu_check: no Python at '$PYTHON' (set PYTHON=...)" >&2
  exit 2
fi
torch_version() { "$PYTHON" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo "not installed"; }
TORCH_BEFORE=$(torch_version)
say "python: $("$PYTHON" -c 'import sys; print(sys.executable, sys.version.split()[0])') · torch $TORCH_BEFORE"

if [ "${NO_INSTALL:-0}" != 1 ]; then
  if [ -n "${WHEELHOUSE:-}" ]; then
    say "installing wheels from $WHEELHOUSE (offline, no dependencies resolved)"
    "$PYTHON" -m pip install --no-index --no-deps --find-links "$WHEELHOUSE" "$WHEELHOUSE"/*.whl \
      >"$OUT/logs/wheelhouse.log" 2>&1 || say "wheelhouse install failed: see $OUT/logs/wheelhouse.log"
  fi
  # --no-deps: pip must not resolve (and replace) torch; --no-build-isolation: build with the
  # scikit-build-core / nanobind / cmake already here (no network). The editable install
  # compiles the C++ extension.
  say "installing oat-edge (editable, --no-deps) and building the C++ extension"
  if ! "$PYTHON" -m pip install --no-deps --no-build-isolation -e . >"$OUT/logs/build.log" 2>&1; then
    say "editable install failed (log: $OUT/logs/build.log); trying a plain install into a private folder"
    SITE=$(mktemp -d /tmp/oat-edge-site.XXXXXX)
    if ! "$PYTHON" -m pip install --no-deps --no-build-isolation --target "$SITE" . >>"$OUT/logs/build.log" 2>&1; then
      echo "gpu_check: cannot install oat-edge; see $OUT/logs/build.log" >&2
      tail -20 "$OUT/logs/build.log" >&2
      exit 2
    fi
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  fi
  TORCH_AFTER=$(torch_version)
  if [ "$TORCH_AFTER" != "$TORCH_BEFORE" ]; then
    echo "gpu_check: the install changed torch ($TORCH_BEFORE -> $TORCH_AFTER); stopping" >&2
    exit 2
  fi
fi
if ! "$PYTHON" -c 'import oat_edge' 2>"$OUT/logs/import.log"; then
  echo "gpu_check: oat_edge does not import; see $OUT/logs/import.log" >&2
  exit 2
fi
"$PYTHON" -c 'from oat_edge.runtime import _native as n; e = n.ext_import_error(); print("[gpu_check.sh] C++ extension:", "built" if not e else "NOT built: " + str(e))'

LEFT=$(( BUDGET_S - ($(date +%s) - START) - 10 ))
if [ "$LEFT" -lt 60 ]; then LEFT=60; fi
say "setup took $(( $(date +%s) - START )) s; gpu_check.py gets ${LEFT} s"
"$PYTHON" scripts/gpu_check.py "$OUT" --budget-s "$LEFT" "$@" 2>&1 | tee "$OUT/logs/gpu_check.log"
rc=${PIPESTATUS[0]}
say "done in $(( $(date +%s) - START )) s (exit $rc): $OUT/summary.md"
exit "$rc"
