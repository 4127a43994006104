#!/usr/bin/env bash
# Compile the TensorRT executor (runtime/csrc/trt_executor.cpp) to an object file -- no link,
# nothing runs -- against one set of TensorRT headers and the CUDA runtime headers, with
# -Wall -Wextra -Werror on oat-edge's code (third-party headers are system includes).
# CI runs it for every TensorRT API version oat-edge supports (.ci/run); it needs no GPU.
#
# Usage: scripts/compile_trt_executor.sh TENSORRT_INCLUDE_DIR CUDA_INCLUDE_DIR [CUDA_INCLUDE_DIR...]
# Uses $PYTHON (default .venv/bin/python, else python3) for the nanobind and Python headers.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$#" -lt 2 ]; then
  echo "usage: $0 TENSORRT_INCLUDE_DIR CUDA_INCLUDE_DIR..." >&2
  exit 2
fi
trt_inc=$1
shift
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
CXX=${CXX:-g++}
nb_inc=$("$PYTHON" -m nanobind --include_dir)
py_inc=$("$PYTHON" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
sys_includes=(-isystem "$trt_inc")
for d in "$@"; do sys_includes+=(-isystem "$d"); done
sys_includes+=(-isystem "$nb_inc" -isystem "$py_inc")
version=$(printf '#include <NvInferVersion.h>\nNV_TENSORRT_MAJOR.NV_TENSORRT_MINOR.NV_TENSORRT_PATCH\n' |
          "$CXX" -E -P -x c++ "${sys_includes[@]}" - | tail -n 1 | tr -d ' ')
cudart=$(printf '#include <cuda_runtime_api.h>\nCUDART_VERSION\n' | "$CXX" -E -P -x c++ "${sys_includes[@]}" - | tail -n 1 | tr -d ' ')
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
flags=(-std=c++17 -O2 -fPIC -c -DOATEDGE_WITH_TENSORRT=1 -Wall -Wextra -Werror)
"$CXX" "${flags[@]}" "${sys_includes[@]}" -I runtime/csrc runtime/csrc/trt_executor.cpp -o "$out/trt_executor.o"
size=$(wc -c < "$out/trt_executor.o")
echo "trt_executor.cpp: compiled (${flags[*]}) against TensorRT $version headers ($trt_inc), CUDART_VERSION $cudart: object $size bytes"
