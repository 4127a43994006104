# Source me: creates/updates .venv with CPU torch and oat-edge[all] (editable, C++ extension
# built). Idempotent; a second run takes seconds.
set -euo pipefail
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch is pinned to the CPU wheel: an unpinned torch pulls GBs of CUDA packages.
python -m pip install -q "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
python -m pip install -q "scikit-build-core>=0.10" "nanobind>=2.0" ninja cmake 2>&1 | grep -v "^WARNING: Location" || true
# No build isolation: the build uses the tools above, and a C++ change needs only a rerun.
python -m pip install -q --no-build-isolation -e ".[all]" 2>&1 | grep -v "^WARNING: Location" || true
python -c "import oat_edge, torch, onnxruntime; print('oat-edge', oat_edge.__version__, '| torch', torch.__version__, '| onnxruntime', onnxruntime.__version__)"
