"""Backends of the runtime: one small interface (``base.Runner``), three implementations, each
imported only when chosen — ``import oat_edge.runtime`` never imports onnxruntime's friends,
torch, TensorRT or pycuda.

    onnxruntime  CPU, numpy + onnxruntime only: the embedded default
    torch        CPU or CUDA (CUDA graphs), runs the bundle's ONNX graphs with torch
    tensorrt     TensorRT engines built on the device (C++ executor or pycuda)

``backend="auto"`` picks TensorRT when it is importable, a CUDA GPU is present and the bundle
has engines for this GPU and TensorRT version that are not stale; otherwise onnxruntime on
the CPU (or torch when a CUDA device was asked for explicitly).
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

from oat_edge.errors import ConfigError

BACKENDS = ("auto", "onnxruntime", "torch", "tensorrt")


def runner_class(name: str):
    if name == "onnxruntime":
        from oat_edge.runtime.backends.onnxruntime import OnnxRuntimeRunner

        return OnnxRuntimeRunner
    if name == "torch":
        try:
            from oat_edge.runtime.backends.torch import TorchRunner
        except ImportError as e:
            raise ConfigError(f"the torch backend needs torch and onnx ({e}); pip install torch onnx") from None
        return TorchRunner
    if name == "tensorrt":
        from oat_edge.runtime.backends.tensorrt import TensorRTRunner

        return TensorRTRunner
    raise ConfigError(f"unknown backend {name!r}; choose one of {BACKENDS}")


def choose_backend(requested: str, device: Optional[str], tensorrt_importable: Callable[[], bool],
                   gpu_present: Callable[[], bool], engines_usable: Callable[[], Tuple[bool, str]]) -> Tuple[str, str]:
    """(backend name, why) for a requested backend; ``auto`` follows the rule in the module
    docstring. The probes are callables so that nothing is probed that is not needed."""
    if requested not in BACKENDS:
        raise ConfigError(f"unknown backend {requested!r}; choose one of {BACKENDS}")
    if requested != "auto":
        return requested, "requested"
    if device not in (None, "cpu") and not str(device).startswith("cuda"):
        raise ConfigError(f"unknown device {device!r} (use 'cpu' or 'cuda[:i]')")
    if device == "cpu":
        return "onnxruntime", "device='cpu'"
    if not tensorrt_importable():
        why = "TensorRT is not installed"
    elif not gpu_present():
        why = "no CUDA GPU found"
    else:
        ok, detail = engines_usable()
        if ok:
            return "tensorrt", "TensorRT, a GPU and current engines are present"
        why = f"no usable TensorRT engines ({detail})"
    # An explicit CUDA device without usable engines: the torch backend is the GPU path left.
    return ("torch" if device is not None and str(device).startswith("cuda") else "onnxruntime"), why
