"""The host under the benchmark: CPU model and clocks, usable cores, memory, load, Jetson power
model and GPU clocks, library versions, and the runtime's cold start and peak memory measured in
a fresh process. (The probes shared with the runtime — CPU name, CUDA devices — are
``oat_edge.host``.)"""

from __future__ import annotations

import glob
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

from oat_edge.host import cpu_description, read_text as _read


def _cpufreq() -> dict:
    """Per-CPU frequency and governor from sysfs, collapsed when every CPU reads the same."""
    base = Path("/sys/devices/system/cpu")
    per_cpu = {}
    for cpu in sorted(base.glob("cpu[0-9]*"), key=lambda p: int(p.name[3:])):
        d = cpu / "cpufreq"
        if not d.is_dir():
            continue
        entry = {}
        for name, key in (("scaling_cur_freq", "cur_khz"), ("scaling_min_freq", "min_khz"),
                          ("scaling_max_freq", "max_khz"), ("cpuinfo_max_freq", "hw_max_khz"),
                          ("scaling_governor", "governor")):
            v = _read(d / name)
            if v is not None:
                entry[key] = int(v) if v.isdigit() else v
        per_cpu[cpu.name] = entry
    if not per_cpu:
        return {"readable": False, "note": "no /sys/devices/system/cpu/cpu*/cpufreq (VM or restricted sysfs)"}
    values = list(per_cpu.values())
    same = all({k: v for k, v in e.items() if k != "cur_khz"} == {k: v for k, v in values[0].items() if k != "cur_khz"}
               for e in values)
    out = {"readable": True, "per_cpu": per_cpu}
    if same:
        out["all_cpus"] = {k: v for k, v in values[0].items() if k != "cur_khz"}
    return out

def _jetson() -> Optional[dict]:
    """Jetson: L4T release, nvpmodel, GPU devfreq, `jetson_clocks --show` when allowed."""
    release = _read("/etc/nv_tegra_release")
    gpu_dirs = [p for pattern in ("/sys/devices/gpu.0/devfreq/*", "/sys/devices/platform/gpu.0/devfreq/*",
                                  "/sys/devices/platform/*.gpu/devfreq/*", "/sys/class/devfreq/*gpu*")
                for p in map(Path, sorted(glob.glob(pattern)))]
    if release is None and not gpu_dirs:
        return None
    info: dict = {"l4t_release": release, "model": (_read("/proc/device-tree/model") or "").strip("\x00 ")}
    for d in gpu_dirs[:1]:
        info["gpu_devfreq"] = {k: _read(d / k) for k in ("cur_freq", "min_freq", "max_freq", "governor")}
        info["gpu_devfreq"]["path"] = str(d)
    for cmd, key in ((["nvpmodel", "-q"], "nvpmodel"), (["jetson_clocks", "--show"], "jetson_clocks")):
        if shutil.which(cmd[0]):
            try:
                p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
                info[key] = (p.stdout or p.stderr).strip()[:4000] or f"exit {p.returncode}"
            except (OSError, subprocess.SubprocessError) as e:
                info[key] = f"not readable: {e}"
    return info

def probe_device(cuda: bool = False) -> dict:
    """Everything that explains a latency figure: CPU model and clocks, cores the process may
    use, memory, load average, OS; on Jetson the power model and GPU clocks; on CUDA the GPU."""
    try:
        affinity = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        affinity = list(range(os.cpu_count() or 1))
    mem_total = None
    meminfo = _read("/proc/meminfo") or ""
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            mem_total = round(int(line.split()[1]) / 1024 / 1024, 2)
    info = {
        "cpu_model": cpu_description(),
        "machine": platform.machine(),
        "os": platform.platform(),
        "logical_cpus": os.cpu_count(),
        "affinity": affinity,
        "mem_total_gib": mem_total,
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "cpufreq": _cpufreq(),
    }
    jetson = _jetson()
    if jetson:
        info["jetson"] = jetson
    if cuda:
        import torch

        p = torch.cuda.get_device_properties(torch.cuda.current_device())
        info["gpu"] = {"name": p.name, "compute_capability": f"{p.major}.{p.minor}",
                       "memory_gib": round(p.total_memory / 2**30, 2), "cuda": torch.version.cuda}
    return info

def library_versions() -> dict:
    """Versions from package metadata (no heavy imports), plus ORT's providers."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("oat-edge", "numpy", "onnxruntime", "onnxruntime-gpu", "torch", "onnx", "tensorrt",
                 "matplotlib", "psutil"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    try:
        import onnxruntime as ort

        out["onnxruntime_providers"] = list(ort.get_available_providers())
    except ImportError:
        pass
    return out

def peak_rss_mb() -> Optional[float]:
    """Peak resident set size of this process: VmHWM on Linux (per address space; ru_maxrss
    would carry the parent's peak across fork+exec), else ru_maxrss (bytes on macOS)."""
    for line in (_read("/proc/self/status", 1 << 14) or "").splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 2)
    try:
        import resource
    except ImportError:
        return None
    v = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(v / (1024 * 1024 if sys.platform == "darwin" else 1024), 2)

def current_rss_mb() -> Optional[float]:
    try:
        import psutil
    except ImportError:
        return None
    return round(psutil.Process().memory_info().rss / 2**20, 2)

# Runs in a fresh interpreter: what a deployment pays — import, Runtime construction, first
# inference per batch, and the peak RSS of a process that holds only the runtime.
_FOOTPRINT_SCRIPT = r"""
import json, sys, time
t0 = time.perf_counter()
from oat_edge.runtime import Runtime
from oat_edge.bench.host import peak_rss_mb
import numpy as np
t1 = time.perf_counter()
cfg = json.loads(sys.argv[1])
rt = Runtime(cfg["bundle"], backend=cfg["backend"], threads=cfg["threads"], device=cfg["device"],
             providers=cfg.get("providers"))
t2 = time.perf_counter()
shape = tuple(cfg["input_shape"])
first = {}
for lam, width in cfg["modes"]:
    rt.set_mode(lam, width)
    for b in cfg["batches"]:
        x = np.random.default_rng(0).random((b,) + shape, dtype=np.float32)
        s = time.perf_counter(); rt.infer(x); first.setdefault(str(b), (time.perf_counter() - s) * 1e3)
gpu = None
if "torch" in sys.modules and cfg["device"] == "cuda":
    import torch
    gpu = torch.cuda.max_memory_allocated() / 2**20
print("FOOTPRINT " + json.dumps({"import_s": t1 - t0, "construct_s": t2 - t1, "first_infer_ms": first,
      "peak_rss_mb": peak_rss_mb(), "gpu_max_allocated_mb": gpu, "torch_imported": "torch" in sys.modules,
      "backend": rt.backend_name, "impl": rt.impl}))
"""

def measure_footprint(bundle: Path, backend: str, threads: int, device: Optional[str], modes, batches,
                      input_shape, timeout_s: float = 300, providers=None) -> dict:
    """Cold start and peak memory of the runtime alone, in a subprocess (the bench process also
    holds torch and the eager baseline, so its own peak RSS says little about deployment)."""
    cfg = {"bundle": str(bundle), "backend": backend, "threads": threads, "device": device,
           "modes": [[m.lam, m.width] for m in modes], "batches": list(batches), "input_shape": list(input_shape),
           "providers": providers}
    env = dict(os.environ)
    try:
        p = subprocess.run([sys.executable, "-c", _FOOTPRINT_SCRIPT, json.dumps(cfg)], capture_output=True,
                           text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"footprint subprocess timed out after {timeout_s:.0f} s"}
    for line in p.stdout.splitlines():
        if line.startswith("FOOTPRINT "):
            return json.loads(line[len("FOOTPRINT "):])
    tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or [f"exit {p.returncode}"]
    return {"error": f"footprint subprocess failed: {tail[0][:300]}"}
