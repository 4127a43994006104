"""What machine this is: processor, CUDA GPUs, TensorRT, usable CPUs — probed without torch.

Shared by the runtime (device keys of latency profiles, backend choice), export (TensorRT
engines are built for, and checked against, this machine's GPU and TensorRT) and the benchmark
(host description). Every probe degrades to "unknown" / [] instead of raising, except
``import_tensorrt``, which says how to install TensorRT.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import platform
import re
import subprocess
import sys
from typing import Any, Dict, List, Optional, Sequence

from oat_edge.errors import ConfigError, DependencyError


def slug(text: str, max_len: int = 48, fallback: str = "unknown") -> str:
    """Lowercase, alphanumerics and single dashes: 'Intel(R) Xeon(R) CPU @ 2.20GHz' ->
    'intel-xeon-cpu-2-20ghz'. ``max_len`` 0: no limit."""
    text = re.sub(r"\((r|tm|c)\)", "", str(text).lower())
    text = re.sub(r"[^a-z0-9]+", "-", text).strip("-")
    if max_len:
        text = text[:max_len].rstrip("-")
    return text or fallback


def read_text(path, limit: int = 4096) -> Optional[str]:
    """A small system file (sysfs, procfs), stripped; None when it is not readable."""
    try:
        with open(path, "r", errors="replace") as f:
            return f.read(limit).strip()
    except OSError:
        return None


def _cpuinfo(keys: Sequence[str]) -> Optional[str]:
    text = read_text("/proc/cpuinfo", 1 << 16) or ""
    for key in keys:
        for line in text.splitlines():
            name, sep, value = line.partition(":")
            if sep and name.strip() == key and value.strip():
                return value.strip()
    return None


# x86: "model name"; many ARM boards (Jetson) have no "model name" but "Hardware" or "cpu model".
_NAME_KEYS = ("model name", "Hardware", "cpu model")


@functools.lru_cache(maxsize=1)
def cpu_name() -> str:
    """The processor's model name as it goes into device keys (latency profiles are named by
    it, so this rule must not change): /proc/cpuinfo, macOS sysctl, else platform."""
    name = _cpuinfo(_NAME_KEYS)
    if name:
        return name
    if platform.system() == "Darwin":
        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                  timeout=2).stdout.strip() or platform.machine()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_description() -> str:
    """The most descriptive processor/board name for reports (also the board model on ARM)."""
    name = _cpuinfo(_NAME_KEYS + ("Model", "Processor"))
    if name:
        return name
    dt_model = read_text("/proc/device-tree/model")
    return (dt_model or platform.processor() or platform.machine() or "unknown").strip("\x00 ")


def total_memory_bytes() -> Optional[int]:
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def is_jetson(gpu: Optional[Dict[str, str]] = None) -> bool:
    """A Jetson module (integrated GPU sharing the system RAM): /etc/nv_tegra_release exists or
    the GPU name says so (cudart reports e.g. "Orin (nvgpu)")."""
    if os.path.exists("/etc/nv_tegra_release"):
        return True
    name = str((gpu or {}).get("name", "")).lower()
    return any(k in name for k in ("orin", "xavier", "tegra", "jetson", "nvgpu"))


def default_threads() -> int:
    """The CPUs this process may use (intra-op threads when the user gives none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS
        return max(1, os.cpu_count() or 1)


@functools.lru_cache(maxsize=1)
def cuda_devices() -> List[Dict[str, str]]:
    """[{"name", "compute_capability"}] of the CUDA GPUs, asked of the driver (libcuda) through
    ctypes — no torch, no CUDA toolkit, works on Jetson; [] when there is no driver or GPU."""
    import ctypes

    for lib in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            cu = ctypes.CDLL(lib)
            break
        except OSError:
            continue
    else:
        return []
    try:
        count = ctypes.c_int()
        if cu.cuInit(0) != 0 or cu.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return []
        out = []
        for i in range(count.value):
            dev, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
            name = ctypes.create_string_buffer(256)
            cu.cuDeviceGet(ctypes.byref(dev), i)
            cu.cuDeviceGetName(name, 256, dev)
            cu.cuDeviceGetAttribute(ctypes.byref(major), 75, dev)  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
            cu.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev)  # ..._MINOR
            out.append({"name": name.value.decode(errors="replace"), "compute_capability": f"{major.value}.{minor.value}"})
        return out
    except (AttributeError, OSError):
        return []


def gpu_present() -> bool:
    return bool(cuda_devices())


def gpu_name(index: int = 0) -> Optional[str]:
    """The CUDA device's name (driver first; torch only if the caller already imported it)."""
    devices = cuda_devices()
    if index < len(devices):
        return devices[index]["name"]
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available():
                return torch.cuda.get_device_name(index)
        except Exception:  # a broken CUDA setup must not break key naming
            pass
    return None


def gpu_info() -> Dict[str, str]:
    """{"name", "compute_capability"} of CUDA device 0, asked of cuda-python, pycuda or torch,
    whichever works, else of the driver itself (libcuda: a Jetson with only TensorRT and the
    C++ executor has none of the three); name "unknown" if nothing answers."""
    try:  # cuda-python: new module layout first, then the old one
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart
        err, dev = cudart.cudaGetDevice()
        if err == cudart.cudaError_t.cudaSuccess:
            err, props = cudart.cudaGetDeviceProperties(dev)
            if err == cudart.cudaError_t.cudaSuccess:
                name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
                return {"name": name.rstrip("\x00").strip(), "compute_capability": f"{props.major}.{props.minor}"}
    except Exception:  # missing module, no driver, no device: try the next source
        pass
    try:
        import pycuda.driver as cuda

        cuda.init()
        dev = cuda.Device(0)
        major, minor = dev.compute_capability()
        return {"name": dev.name(), "compute_capability": f"{major}.{minor}"}
    except Exception:
        pass
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return {"name": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}
    except Exception:
        pass
    devices = cuda_devices()
    if devices:
        return dict(devices[0])
    return {"name": "unknown", "compute_capability": "unknown"}


def tensorrt_importable() -> bool:
    """Whether ``import tensorrt`` would find a module (without importing it)."""
    return importlib.util.find_spec("tensorrt") is not None


def import_tensorrt():
    """The ``tensorrt`` module, or ConfigError saying how to get it."""
    try:
        import tensorrt as trt  # noqa: F401
    except ImportError:
        raise DependencyError(
            "TensorRT is not installed: engines are built on the target device (JetPack 6 ships "
            "TensorRT 10.x as python3-libnvinfer; on x86 `pip install tensorrt`). The bundle's ONNX "
            "paths run without it (onnxruntime)."
        ) from None
    return trt


def tensorrt_available() -> bool:
    try:
        import_tensorrt()
        return True
    except ConfigError:
        return False


def probe_environment() -> Dict[str, Any]:
    """TensorRT version and GPU of this machine; ConfigError without TensorRT."""
    trt = import_tensorrt()
    return {"tensorrt_version": str(trt.__version__), "gpu": gpu_info()}
