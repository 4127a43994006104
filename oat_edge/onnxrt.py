"""ONNX Runtime session set-up, written once: the runtime's onnxruntime backend, the export
parity gate and ``verify`` all open sessions here, so a path runs with the same options
everywhere. onnxruntime is imported when a session is opened, not at import."""

from __future__ import annotations

from typing import Optional

from oat_edge.errors import BundleError
from oat_edge.fileio import PathLike

PROVIDERS = ["CPUExecutionProvider"]


def session_options(threads: Optional[int] = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1  # our graphs are a single chain: no inter-op parallelism to gain
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only
    return so


def open_session(file: PathLike, threads: Optional[int] = None, options=None):
    """A CPU InferenceSession of one ONNX file; BundleError when onnxruntime cannot load it."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(file), options or session_options(threads), providers=PROVIDERS)
    except Exception as e:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else e
        raise BundleError(f"onnxruntime cannot load {file}: {first}") from None
