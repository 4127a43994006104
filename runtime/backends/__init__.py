"""Backends of the runtime, as a registry (Polygraphy's backend/<x>/{loader,runner} layout).

Each backend is a package here with
- ``loader.py``: what loading needs — ``available()`` (can this machine run the backend at
  all, without importing anything heavy), ``auto_check(ctx)`` for backends that ``auto`` may
  pick, and the functions that open one path (session, module, engine);
- ``runner.py``: a ``base.Runner`` subclass holding every path of a bundle, loaded up front.

Adding a backend: a package with those two modules, and one ``register`` line below. The
runtime, ``verify``, the benchmark and the CLI's ``--backend`` choices all read this registry.

    onnxruntime  CPU, numpy + onnxruntime only: the embedded default
    torch        CPU or CUDA (CUDA graphs), runs the bundle's ONNX graphs with torch
    tensorrt     TensorRT engines built on the device (C++ executor or pycuda)
    openvino     CPU, OpenVINO's CPU plugin (optional extra: pip install oat-edge[openvino])

``backend="auto"``: on ``device="cpu"`` onnxruntime; otherwise the first backend marked
``auto`` whose ``auto_check`` passes (TensorRT: importable, a CUDA GPU present, current engines
in the bundle for this GPU and TensorRT version); otherwise the CUDA fallback (torch) when a
CUDA device was asked for explicitly, else onnxruntime on the CPU. Importing this package
imports no backend.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

from oat_edge.errors import ConfigError, DependencyError

AUTO = "auto"


@dataclass(frozen=True)
class Backend:
    name: str
    package: str  # holds loader.py and runner.py
    runner: str  # class name in runner.py
    devices: Tuple[str, ...]  # "cpu" and/or "cuda"
    default_device: str
    auto: bool = False  # `auto` may pick it when its loader's auto_check passes
    cuda_fallback: bool = False  # `auto` with an explicit CUDA device and no auto pick
    install: str = ""  # what to install when it is missing

    def loader(self):
        return importlib.import_module(f"{self.package}.loader")

    def runner_class(self):
        try:
            module = importlib.import_module(f"{self.package}.runner")
        except ImportError as e:
            raise DependencyError(f"the {self.name} backend needs {self.install or 'packages that are missing'} ({e})") from None
        return getattr(module, self.runner)


REGISTRY: Dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    REGISTRY[backend.name] = backend
    return backend


_HERE = __name__
register(Backend("onnxruntime", f"{_HERE}.onnxruntime", "OnnxRuntimeRunner", ("cpu",), "cpu"))
register(Backend("torch", f"{_HERE}.torch", "TorchRunner", ("cpu", "cuda"), "cpu", cuda_fallback=True,
                 install="torch and onnx; pip install torch onnx"))
register(Backend("tensorrt", f"{_HERE}.tensorrt", "TensorRTRunner", ("cuda",), "cuda", auto=True,
                 install="TensorRT; pip install oat-edge[tensorrt]"))
register(Backend("openvino", f"{_HERE}.openvino", "OpenVINORunner", ("cpu",), "cpu",
                 install="openvino; pip install oat-edge[openvino]"))

DEFAULT = "onnxruntime"


def names(with_auto: bool = True) -> List[str]:
    return ([AUTO] if with_auto else []) + list(REGISTRY)



def get(name: str) -> Backend:
    check_backend_name(name, allow_auto=False)
    return REGISTRY[name]


def check_backend_name(name: str, allow_auto: bool = True, extra: Tuple[str, ...] = ()) -> str:
    """``name`` if it is a registered backend (or "auto" / one of ``extra``), else ConfigError."""
    valid = names(allow_auto) + list(extra)
    if name not in valid:
        raise ConfigError(f"unknown backend {name!r}; choose one of {', '.join(valid)}")
    return name


def check_device(device: Optional[str]) -> Optional[str]:
    """None, "cpu", "cuda" or "cuda:<i>"; ConfigError otherwise."""
    if device in (None, "cpu", "cuda") or (str(device).startswith("cuda:") and str(device)[5:].isdigit()):
        return device
    raise ConfigError(f"unknown device {device!r} (use 'cpu' or 'cuda[:i]')")


def device_kind(device: Optional[str]) -> Optional[str]:
    return None if device is None else ("cuda" if str(device).startswith("cuda") else "cpu")


def runner_class(name: str):
    return get(name).runner_class()


def choose_backend(requested: str, device: Optional[str],
                   auto_check: Callable[[Backend], Tuple[bool, str]]) -> Tuple[str, str]:
    """(backend name, why) for a requested backend; ``auto`` follows the rule in the module
    docstring. ``auto_check(backend)`` -> (ok, why) asks a backend's loader whether it can run
    this bundle here; it is called only for the ``auto`` candidates, in registry order."""
    check_backend_name(requested)
    if requested != AUTO:
        return requested, "requested"
    check_device(device)
    if device == "cpu":
        return DEFAULT, "device='cpu'"
    why = "no backend for a GPU is registered"
    for backend in REGISTRY.values():
        if backend.auto:
            ok, why = auto_check(backend)
            if ok:
                return backend.name, why
    if device_kind(device) == "cuda":  # an explicit CUDA device: the GPU backend left
        fallback = next((b.name for b in REGISTRY.values() if b.cuda_fallback), DEFAULT)
        return fallback, why
    return DEFAULT, why
