"""Which machine the runtime runs on, as a short key, and the bundle's latency profiles.

``device_key(backend, threads)`` names a latency profile: ``BUNDLE/latency/{key}.json`` is
written by ``oat-edge bench`` on a device and read by ``Runtime.select`` on the same kind of
device. Latency depends on the processor, the backend and the thread count, so all three are
in the key, e.g. ``cpu-intel-xeon-platinum-8375c-onnxruntime-t2`` or
``gpu-nvidia-jetson-orin-tensorrt``. No torch import here.
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Dict, List, Optional

from oat_edge.errors import BundleError

PROFILE_FIELDS = ("lam", "width", "batch", "path", "p50_ms")


def slug(text: str, max_len: int = 48) -> str:
    """Lowercase, alphanumerics and single dashes: 'Intel(R) Xeon(R) CPU @ 2.20GHz' ->
    'intel-xeon-cpu-2-20ghz'."""
    text = re.sub(r"\((r|tm|c)\)", "", text.lower())
    text = re.sub(r"[^a-z0-9]+", "-", text).strip("-")
    return text[:max_len].rstrip("-") or "unknown"


@functools.lru_cache(maxsize=1)
def cpu_name() -> str:
    """The processor's model name (Linux /proc/cpuinfo, macOS sysctl, else platform)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                # x86: "model name"; many ARM boards (Jetson): "model name" missing, "Hardware" or
                # "CPU part" present; fall back to the machine type below.
                if key.strip() in ("model name", "Hardware", "cpu model") and value.strip():
                    return value.strip()
    except OSError:
        pass
    if platform.system() == "Darwin":
        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                  timeout=2).stdout.strip() or platform.machine()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown"


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
    import sys

    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available():
                return torch.cuda.get_device_name(index)
        except Exception:  # a broken CUDA setup must not break key naming
            pass
    return None


def device_key(backend_name: str, threads: Optional[int] = None, device: Optional[str] = None) -> str:
    """Key of this machine + backend (+ CPU thread count): the name of the latency profile.

    ``device`` is "cpu" (default for onnxruntime and torch) or "cuda[:i]" (tensorrt and torch on
    a GPU); the processor or GPU model is part of the key because latency is measured there."""
    backend = slug(backend_name, 24)
    if device is None:
        device = "cuda" if backend_name == "tensorrt" else "cpu"
    if str(device).startswith("cuda"):
        index = int(str(device).split(":")[1]) if ":" in str(device) else 0
        key = f"gpu-{slug(gpu_name(index) or 'cuda')}-{backend}"
    else:
        key = f"cpu-{slug(cpu_name())}-{backend}"
        if threads:
            key += f"-t{int(threads)}"
    return key


def profile_path(bundle_dir, key: str) -> Path:
    return Path(bundle_dir) / "latency" / f"{key}.json"


def read_latency_profile(bundle_dir, key: str) -> Optional[dict]:
    """The latency profile ``BUNDLE/latency/{key}.json`` or None when there is none. A profile
    that exists but is malformed is an error (BundleError), not silently ignored."""
    path = profile_path(bundle_dir, key)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"latency profile {path} is not readable JSON ({e}); rerun `oat-edge bench`") from None
    records = data.get("records") if isinstance(data, dict) else None
    if not isinstance(records, list):
        raise BundleError(f"latency profile {path} has no 'records' list; rerun `oat-edge bench`")
    if data.get("device_key") not in (None, key):
        raise BundleError(f"latency profile {path} is for device {data.get('device_key')!r}, not {key!r}")
    clean = []
    for i, r in enumerate(records):
        if not isinstance(r, dict) or any(f not in r for f in PROFILE_FIELDS):
            raise BundleError(f"latency profile {path}: record {i} lacks one of {PROFILE_FIELDS}")
        try:
            rec = {"lam": float(r["lam"]), "width": float(r["width"]), "batch": int(r["batch"]),
                   "path": str(r["path"]), "p50_ms": float(r["p50_ms"])}
        except (TypeError, ValueError):
            raise BundleError(f"latency profile {path}: record {i} has non-numeric values") from None
        if not (math.isfinite(rec["p50_ms"]) and rec["p50_ms"] >= 0):
            raise BundleError(f"latency profile {path}: record {i} has an invalid p50_ms")
        for extra in ("p90_ms", "p99_ms", "throughput_ips"):
            if extra in r:
                rec[extra] = r[extra]
        clean.append(rec)
    return {**data, "records": clean, "file": str(path)}


def default_threads() -> int:
    """Intra-op threads when the user gives none: the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS
        return max(1, os.cpu_count() or 1)
