"""Loading bundle paths into OpenVINO compiled models (CPU plugin), from the ONNX bytes the
manifest verified. ``openvino`` is an optional extra (``pip install oat-edge[openvino]``) and is
imported only when a runner is built."""

from __future__ import annotations

import importlib.util
import threading
from typing import Dict, Optional, Tuple

from oat_edge.errors import BundleError, ConfigError, DependencyError
from oat_edge.runtime.backends.base import IOSpec, PathSpec

# PERFORMANCE_HINT per option: "latency" (one stream, the default: one inference at a time is
# the robot loop's case) or "throughput" (several streams, for many concurrent inferences).
HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT"}
# The CPU plugin's default inference precision is bf16 or fp16 where the CPU has them (|Δlogit|
# ~8e-3 against fp32 on digits), beyond the bundle's fp32 parity bar: ask for f32.
PRECISION_HINT = "f32"

_core = None
_core_lock = threading.Lock()


def available() -> Tuple[bool, str]:
    if importlib.util.find_spec("openvino") is None:
        return False, "openvino is not installed (pip install oat-edge[openvino])"
    return True, ""


def core():
    """One ``openvino.Core`` per process (it holds the plugins)."""
    global _core
    with _core_lock:
        if _core is None:
            try:
                import openvino as ov
            except ImportError as e:
                raise DependencyError(f"the openvino backend needs openvino; pip install oat-edge[openvino] ({e})") from None
            _core = ov.Core()
        return _core


def config(threads: int, hint: str = "latency") -> Dict[str, str]:
    if hint not in HINTS:
        raise ConfigError(f"openvino hint must be one of {sorted(HINTS)}, got {hint!r}")
    return {"PERFORMANCE_HINT": HINTS[hint], "INFERENCE_PRECISION_HINT": PRECISION_HINT,
            "INFERENCE_NUM_THREADS": str(int(threads))}


def compile_bytes(data: bytes, settings: Dict[str, str], label: str):
    """A compiled CPU model of a serialized ONNX graph; BundleError when OpenVINO refuses it."""
    try:
        return core().compile_model(core().read_model(data), "CPU", settings)
    except RuntimeError as e:  # OpenVINO raises RuntimeError subclasses with long C++ traces
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BundleError(f"openvino cannot load {label}: {first[:300]}") from None


def load_path(spec: PathSpec, io: IOSpec, settings: Dict[str, str], verified: Optional[dict] = None):
    """The compiled model of one path whose inputs and output are the ones the manifest names."""
    data, external = (verified or {}).get(spec.file, (None, ()))
    if external:  # ONNX with external data: OpenVINO reads it next to the file, not from memory
        raise BundleError(f"path {spec.id} keeps its weights in external data files, which the openvino "
                          "backend does not read; use the onnxruntime backend")
    if data is None:
        data = spec.file.read_bytes()
    compiled = compile_bytes(data, settings, f"path {spec.id} ({spec.file.name})")
    names = sorted(n for i in compiled.inputs for n in i.get_names())
    want = [io.images, io.film] if spec.has_film else [io.images]
    if not set(want) <= set(names) or len(compiled.inputs) != len(want):
        raise BundleError(f"path {spec.id} ({spec.file.name}) has inputs {names}, the manifest says {want}")
    if not any(io.logits in o.get_names() for o in compiled.outputs):
        raise BundleError(f"path {spec.id} has no output {io.logits!r}")
    shape = compiled.input(io.images).get_partial_shape()
    got = [d.get_length() if d.is_static else None for d in shape]
    if len(got) != 1 + len(io.input_shape) or any(g not in (None, w) for g, w in zip(got[1:], io.input_shape)):
        raise BundleError(f"path {spec.id} ({spec.file.name}): {io.images} has shape {got}, the manifest says "
                          f"{['batch', *io.input_shape]}")
    return compiled
