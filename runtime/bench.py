"""`oat-edge bench`: on-device latency of every (λ, width) mode of a bundle, the cost of a mode
switch, and the baselines that justify the design — all measured in ONE run, interleaved.

Method (docs/benchmarking.md has the why):
- every measured thing is a *block* (one variant for ``duration`` seconds, at least a few calls);
- one warm-up pass over all blocks, then ``rounds`` rounds; each round runs every block once, in
  a rotated order, so no variant always runs first, last, or after the same neighbour;
- per block and round we take p50/p90/p99 of the per-call times; the report gives the median of
  those across rounds. Ratios (ORT vs eager, width 0.5 vs 1.0, FiLM vs baked, naive vs set_mode)
  come from the same run, which is what survives the 4× run-to-run drift of shared VMs.

The measured profile is written into the bundle (``BUNDLE/latency/{device_key}.json``) where
``Runtime.select(max_latency_ms=...)`` reads it. Importing this module is cheap: torch, matplotlib
and the runtime are imported inside functions.
"""

from __future__ import annotations

import gc
import glob
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from oat_edge.errors import BundleError, ConfigError, ModeError
from oat_edge.mode import Mode, match_width

SCHEMA = "oat-edge/bench"
SCHEMA_VERSION = 1
DEFAULT_BATCHES = (1, 8, 32)
# Unseen λ added to the training set when the bundle has no calibration grid (from the paper's S3).
DEFAULT_UNSEEN = (0.15, 0.5, 0.9)
MIN_ITERS = 5  # calls per block and round, even when one call outlasts the block's duration
REWARM_CALLS = 2  # untimed calls at the start of every block: the previous block evicted caches
LAM_TOL = 1e-9
UNSTABLE_SPREAD = 2.0  # rounds whose medians differ more than this flag a disturbed measurement


# ------------------------------------------------------------------------------------------------
# Statistics
# ------------------------------------------------------------------------------------------------
def summarize_ns(samples_ns: Sequence[int]) -> dict:
    """p50/p90/p99/mean/min in milliseconds of per-call times given in nanoseconds."""
    a = np.asarray(samples_ns, dtype=np.float64) / 1e6
    if a.size == 0:
        raise ValueError("no samples")
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99),
            "mean_ms": float(a.mean()), "min_ms": float(a.min()), "n": int(a.size)}


def median_across_rounds(per_round: Sequence[dict]) -> dict:
    """Median of each per-round statistic; ``n`` is the total sample count, and the per-round p50
    values are kept so a reader can see the spread that the median hides."""
    keys = [k for k in per_round[0] if k != "n"]
    out = {k: float(np.median([r[k] for r in per_round])) for k in keys}
    out["n"] = int(sum(r["n"] for r in per_round))
    out["rounds"] = len(per_round)
    out["round_p50_ms"] = [round(r["p50_ms"], 6) for r in per_round]
    return out


def ratio(num: Optional[float], den: Optional[float]) -> Optional[float]:
    if num is None or den is None or den <= 0 or not math.isfinite(num) or not math.isfinite(den):
        return None
    return float(num / den)


# ------------------------------------------------------------------------------------------------
# The interleaved scheduler
# ------------------------------------------------------------------------------------------------
@dataclass
class Block:
    """One measured variant. ``run(duration_s)`` returns {metric: [ns, ...]} for one round;
    ``meta`` describes it in the results (kind, λ, width, batch, path...)."""

    key: str
    run: Callable[[float], Dict[str, List[int]]]
    meta: dict = field(default_factory=dict)
    warm: Optional[Callable[[float], None]] = None  # warm-up; defaults to run() with results dropped


def timed_calls(fn: Callable[[], object], duration_s: float, min_iters: int = MIN_ITERS,
                rewarm: int = REWARM_CALLS) -> List[int]:
    """Time ``fn()`` call by call for ``duration_s`` seconds (and at least ``min_iters`` calls)."""
    for _ in range(rewarm):
        fn()
    clock = time.perf_counter_ns
    out: List[int] = []
    deadline = clock() + int(duration_s * 1e9)
    while True:
        t0 = clock()
        fn()
        t1 = clock()
        out.append(t1 - t0)
        if t1 >= deadline and len(out) >= min_iters:
            return out


def round_orders(n_blocks: int, rounds: int) -> List[List[int]]:
    """Block order of each round: a rotation whose start moves by ⌈n/rounds⌉ per round, so the
    starting positions spread over the whole list; odd rounds run backwards, so a block's
    neighbours differ from round to round."""
    step = max(1, math.ceil(n_blocks / max(rounds, 1)))
    orders = []
    for r in range(rounds):
        start = (r * step) % max(n_blocks, 1)
        order = list(range(start, n_blocks)) + list(range(0, start))
        orders.append(order[::-1] if r % 2 else order)
    return orders


def run_interleaved(blocks: Sequence[Block], rounds: int, duration_s: float, warmup_s: float,
                    progress=None) -> Dict[str, Dict[str, List[List[int]]]]:
    """Warm every block up, then run ``rounds`` interleaved rounds.

    Returns {block key: {metric: [samples of round 0, samples of round 1, ...]}}. The garbage
    collector is off inside a block (as in ``timeit``) and run between blocks, so a collection
    triggered by one variant is not billed to the next."""
    keys = [b.key for b in blocks]
    if len(set(keys)) != len(keys):
        raise ValueError("block keys must be unique")
    results: Dict[str, Dict[str, List[List[int]]]] = {b.key: {} for b in blocks}
    task = progress.add_task("warm-up", total=len(blocks) * (rounds + 1)) if progress else None
    gc_was_enabled = gc.isenabled()
    # Objects alive now (torch, models, sessions) are moved out of the collector's sight: the
    # collections between blocks then scan only what the blocks allocated (ms, not 100s of ms).
    gc.collect()
    gc.freeze()
    try:
        for b in blocks:
            gc.collect()
            gc.disable()
            if b.warm is not None:
                b.warm(warmup_s)
            elif warmup_s > 0:
                b.run(warmup_s)
            gc.enable()
            if progress:
                progress.advance(task)
        for r, order in enumerate(round_orders(len(blocks), rounds)):
            if progress:
                progress.update(task, description=f"round {r + 1}/{rounds}")
            for i in order:
                b = blocks[i]
                gc.collect()
                gc.disable()
                samples = b.run(duration_s)
                gc.enable()
                for metric, values in samples.items():
                    results[b.key].setdefault(metric, []).append(list(values))
                if progress:
                    progress.advance(task)
    finally:
        gc.unfreeze()
        if gc_was_enabled:
            gc.enable()
    return results


def aggregate(samples: Dict[str, List[List[int]]]) -> Dict[str, dict]:
    """{metric: median-across-rounds summary} of one block's samples."""
    return {m: median_across_rounds([summarize_ns(r) for r in rounds if r])
            for m, rounds in samples.items() if any(rounds)}


def timer_overhead_ns(n: int = 20000) -> dict:
    """What one perf_counter_ns pair costs here: the floor under every µs-scale figure."""
    clock = time.perf_counter_ns
    d = np.empty(n, dtype=np.int64)
    for i in range(n):
        t0 = clock()
        d[i] = clock() - t0
    return {"p50_ns": float(np.median(d)), "p99_ns": float(np.percentile(d, 99)),
            "resolution_ns": time.get_clock_info("perf_counter").resolution * 1e9}


# ------------------------------------------------------------------------------------------------
# Device, clocks, versions, memory
# ------------------------------------------------------------------------------------------------
def _read(path, limit: int = 4096) -> Optional[str]:
    try:
        with open(path, "r", errors="replace") as f:
            return f.read(limit).strip()
    except OSError:
        return None


def _cpu_model() -> str:
    text = _read("/proc/cpuinfo", 1 << 16) or ""
    for key in ("model name", "Hardware", "Model", "cpu model", "Processor"):
        for line in text.splitlines():
            if line.split(":")[0].strip() == key and ":" in line:
                value = line.split(":", 1)[1].strip()
                if value:
                    return value
    dt_model = _read("/proc/device-tree/model")
    return (dt_model or platform.processor() or platform.machine() or "unknown").strip("\x00 ")


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
        "cpu_model": _cpu_model(),
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
from oat_edge.runtime.bench import peak_rss_mb
import numpy as np
t1 = time.perf_counter()
cfg = json.loads(sys.argv[1])
rt = Runtime(cfg["bundle"], backend=cfg["backend"], threads=cfg["threads"], device=cfg["device"])
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
                      input_shape, timeout_s: float = 300) -> dict:
    """Cold start and peak memory of the runtime alone, in a subprocess (the bench process also
    holds torch and the eager baseline, so its own peak RSS says little about deployment)."""
    cfg = {"bundle": str(bundle), "backend": backend, "threads": threads, "device": device,
           "modes": [[m.lam, m.width] for m in modes], "batches": list(batches), "input_shape": list(input_shape)}
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


# ------------------------------------------------------------------------------------------------
# Inputs: modes, batches, backend
# ------------------------------------------------------------------------------------------------
def parse_modes(tokens: Sequence[str], widths: Sequence[float]) -> List[Mode]:
    """``["0:0.5", "1:1.0"]`` -> [Mode(0, 0.5), Mode(1, 1)], each width one the bundle has."""
    modes: List[Mode] = []
    for tok in tokens:
        parts = str(tok).split(":")
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise ModeError(f"--modes takes λ:width pairs such as 0:0.5 1:1.0, got {tok!r}")
        try:
            lam, width = float(parts[0]), float(parts[1])
        except ValueError:
            raise ModeError(f"--modes takes λ:width pairs of numbers such as 0.3:0.75, got {tok!r}") from None
        mode = Mode(lam, match_width(width, widths))
        if mode not in modes:
            modes.append(mode)
    if not modes:
        raise ModeError("--modes needs at least one λ:width pair")
    return modes


def default_modes(manifest: dict) -> List[Mode]:
    """The calibration grid when the bundle has one, otherwise (training λ ∪ a few unseen λ) ×
    every width."""
    widths = [float(w) for w in manifest["model"]["widths"]]
    calib = manifest.get("calibration") or {}
    modes: List[Mode] = []
    for rec in calib.get("records", []) or []:
        m = Mode(float(rec["lam"]), match_width(rec["width"], widths))
        if m not in modes:
            modes.append(m)
    if not modes:
        lams = sorted(set(float(x) for x in manifest["model"]["train_lambdas"]) | set(DEFAULT_UNSEEN))
        modes = [Mode(lam, w) for lam in lams for w in widths]
    return sorted(modes, key=lambda m: (m.width, m.lam))


def check_batches(batches: Sequence[int], manifest: dict) -> List[int]:
    prof = manifest.get("batch") or {}
    lo, hi = int(prof.get("min", 1)), int(prof.get("max", 1 << 30))
    out = []
    for b in batches:
        if int(b) != b or not lo <= int(b) <= hi:
            raise ConfigError(f"batch {b} is outside the bundle's batch profile {lo}..{hi} "
                              f"(re-export with a wider --batch to benchmark it)")
        if int(b) not in out:
            out.append(int(b))
    return out


def check_backend(backend: str, device: Optional[str]) -> None:
    from oat_edge.runtime.backends import BACKENDS

    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if device not in (None, "cpu", "cuda") and not str(device).startswith("cuda:"):
        raise ConfigError(f"unknown device {device!r}; use cpu or cuda")
    if device is not None and str(device).startswith("cuda"):
        if backend not in ("torch", "tensorrt"):
            raise ConfigError("--device cuda needs --backend torch (CUDA graphs) or --backend tensorrt")
        try:
            import torch
        except ImportError:
            raise ConfigError("--device cuda needs torch with CUDA; torch is not installed") from None
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: torch sees no CUDA device on this machine "
                              f"(torch {torch.__version__}); benchmark the CPU backends instead")


def active_path(rt, mode: Mode) -> tuple:
    """(path id, "film" | "baked") that ``Runtime.infer`` runs for ``mode`` (asked of the runtime)."""
    pid = rt.path_for(mode.lam, mode.width)
    return pid, rt.backend.path(pid).kind


def film_path_id(mode: Mode) -> str:
    """The generic BN path of a mode's width (the one fed a FiLM vector)."""
    from oat_edge.export.bundle import path_id

    return path_id(mode.bn, mode.width)


def _sample_images(batch: int, input_shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed + batch).random((batch,) + tuple(input_shape), dtype=np.float32)


# ------------------------------------------------------------------------------------------------
# Hooks into the runtime (R's API; kept in one place)
# ------------------------------------------------------------------------------------------------
def _film_vector(rt, mode: Mode) -> np.ndarray:
    """The flat FiLM vector the runtime feeds for ``mode`` (computed by the runtime, not here)."""
    return np.ascontiguousarray(rt.film_vector(mode.lam, mode.width), dtype=np.float32)


def _naive_call(handle, images: np.ndarray, film: Optional[np.ndarray]):
    """Run one inference on what ``backend.open_naive`` returned."""
    return handle(images, film=film)


# ------------------------------------------------------------------------------------------------
# Building the blocks
# ------------------------------------------------------------------------------------------------
def _switch_order(modes: Sequence[Mode]) -> List[Mode]:
    """Modes in an order where consecutive entries run different paths when the bundle allows it
    (alternate widths), so every switch in the cycle really changes the active path."""
    by_width: Dict[float, List[Mode]] = {}
    for m in modes:
        by_width.setdefault(m.width, []).append(m)
    order: List[Mode] = []
    queues = [list(v) for _, v in sorted(by_width.items())]
    while any(queues):
        for q in queues:
            if q:
                order.append(q.pop(0))
    return order


def _runtime_blocks(rt, modes, batches, images) -> List[Block]:
    blocks = []
    for b in batches:
        x = images[b]
        for m in modes:
            pid, kind = active_path(rt, m)

            def run(d, m=m, x=x):
                rt.set_mode(m.lam, m.width)
                return {"latency": timed_calls(lambda: rt.infer(x), d)}

            blocks.append(Block(f"runtime|{m.lam:g}|{m.width:g}|{b}", run,
                                {"kind": "runtime", "lam": m.lam, "width": m.width, "batch": b,
                                 "path": kind, "path_id": pid}))
    return blocks


def _film_vs_baked_blocks(rt, modes, batches, images) -> List[Block]:
    """For every mode with a baked path: the same mode through the FiLM-as-input path and
    through the baked path, both via ``backend.infer_path`` (same entry point, fair ratio)."""
    blocks = []
    for m in modes:
        baked_id, kind = active_path(rt, m)
        if kind != "baked":
            continue
        vec = _film_vector(rt, m)
        for b in batches:
            x = images[b]
            for path, pid, film in (("film", film_path_id(m), vec), ("baked", baked_id, None)):
                def run(d, pid=pid, x=x, film=film):
                    return {"latency": timed_calls(lambda: rt.backend.infer_path(pid, x, film=film), d)}

                blocks.append(Block(f"path|{path}|{m.lam:g}|{m.width:g}|{b}", run,
                                    {"kind": "path", "path": path, "path_id": pid, "lam": m.lam,
                                     "width": m.width, "batch": b}))
    return blocks


def on_film_grid(rt, mode: Mode) -> bool:
    """Whether set_mode to ``mode`` is a lookup (baked path, or λ on the FiLM table grid of the
    manifest) rather than an exact FiLM computation for an off-grid λ."""
    grid = (rt.manifest.get("film") or {}).get("grid") or []
    return active_path(rt, mode)[1] == "baked" or any(abs(float(g) - mode.lam) <= LAM_TOL for g in grid)


def _switch_block(rt, modes, batch, images) -> Block:
    """set_mode alone (tight loop over the mode cycle; switches to grid/baked modes and to
    off-grid λ, which compute a FiLM vector, kept apart), then set_mode + the first inference
    after it against a steady-state inference of the same mode."""
    cycle = _switch_order(modes)
    on_grid = [on_film_grid(rt, m) for m in cycle]
    x = images[batch]

    def run(d):
        clock = time.perf_counter_ns
        set_grid, set_off, switch_first, first_only, steady = [], [], [], [], []
        n = len(cycle)
        deadline = clock() + int(d * 0.3e9)
        i = 0
        while True:  # set_mode alone: µs scale, so many samples
            m = cycle[i % n]
            t0 = clock()
            rt.set_mode(m.lam, m.width)
            t1 = clock()
            (set_grid if on_grid[i % n] else set_off).append(t1 - t0)
            i += 1
            if t1 >= deadline and i >= 200:
                break
        deadline = clock() + int(d * 0.7e9)
        j = 0
        while True:
            m = cycle[(i + j) % n]
            t0 = clock()
            rt.set_mode(m.lam, m.width)
            t1 = clock()
            rt.infer(x)
            t2 = clock()
            rt.infer(x)
            t3 = clock()
            rt.infer(x)
            t4 = clock()
            switch_first.append(t2 - t0)
            first_only.append(t2 - t1)
            steady.append(t4 - t3)  # the third call in the mode: caches hold this path again
            j += 1
            if t4 >= deadline and j >= MIN_ITERS:
                break
        return {"set_mode": set_grid, "set_mode_offgrid": set_off, "set_mode_plus_first_infer": switch_first,
                "first_infer_after_switch": first_only, "steady_infer": steady}

    return Block("switch", run, {"kind": "switch", "batch": batch, "cycle": [[m.lam, m.width] for m in cycle],
                                 "offgrid": [[m.lam, m.width] for m, g in zip(cycle, on_grid) if not g]})


def _naive_block(rt, modes, batch, images) -> Optional[Block]:
    """The naive switch: a new session (or engine context) for the target path on every change."""
    cycle = _switch_order(modes)
    targets = []  # the distinct paths the mode cycle runs, in switch order
    for m in cycle:
        pid = active_path(rt, m)[0]
        if pid not in [t[0] for t in targets]:
            targets.append((pid, m))
    films = {pid: (_film_vector(rt, m) if active_path(rt, m)[1] == "film" else None) for pid, m in targets}
    x = images[batch]
    try:  # a backend without the baseline says so (base Runner raises NotImplementedError)
        _naive_call(rt.backend.open_naive(targets[0][0]), x, films[targets[0][0]])
    except NotImplementedError:
        return None

    def run(d):
        clock = time.perf_counter_ns
        open_ns, open_first = [], []
        deadline = clock() + int(d * 1e9)
        k = 0
        while True:
            pid, _ = targets[k % len(targets)]
            t0 = clock()
            handle = rt.backend.open_naive(pid)
            t1 = clock()
            _naive_call(handle, x, films[pid])
            t2 = clock()
            del handle
            open_ns.append(t1 - t0)
            open_first.append(t2 - t0)
            k += 1
            if t2 >= deadline and k >= 3:
                break
        return {"naive_open": open_ns, "naive_open_plus_first_infer": open_first}

    return Block("naive", run, {"kind": "naive", "batch": batch, "path_ids": [t[0] for t in targets]},
                 warm=lambda d: run(0.0))


def _load_block(bundle, backend, threads, device) -> Block:
    from oat_edge.runtime import Runtime

    def run(d):
        t0 = time.perf_counter_ns()
        r = Runtime(bundle, backend=backend, threads=threads, device=device)
        t1 = time.perf_counter_ns()
        del r
        return {"load": [t1 - t0]}

    return Block("load", run, {"kind": "load"}, warm=lambda d: run(0.0))


def _eager_blocks(checkpoint, rt, modes, batches, images, device) -> tuple:
    """PyTorch eager of the original conditional model — the naive deployment: FiLM generators
    and dual BN evaluated on every call, ``model(x, λ)`` at the width, under no_grad, with the
    runtime's thread count. One λ per width: the largest λ of that width among the modes."""
    import torch

    from oat_edge.checkpoint import load_model
    from oat_edge.fileio import sha256_file

    manifest = rt.manifest
    model, payload = load_model(checkpoint)
    src = manifest.get("source") or {}
    if src.get("arch") and payload["arch"] != src["arch"]:
        raise ConfigError(f"--checkpoint is a {payload['arch']!r} model but the bundle was exported from "
                          f"{src['arch']!r}; pass the checkpoint the bundle came from")
    bundle_widths = [float(w) for w in manifest["model"]["widths"]]
    missing = [w for w in bundle_widths if not any(abs(w - mw) <= 1e-6 for mw in model.widths)]
    if missing:
        raise ConfigError(f"--checkpoint lacks widths {missing} that the bundle has")
    dev = torch.device(device if device and str(device).startswith("cuda") else "cpu")
    model = model.to(dev).eval()
    info = {"checkpoint": str(checkpoint), "arch": payload["arch"],
            "matches_bundle": sha256_file(checkpoint) == src.get("checkpoint_sha256"),
            "torch_threads": torch.get_num_threads(), "device": str(dev)}
    # One λ per width: the largest λ of that width that runs the FiLM path (the general path;
    # a baked mode would flatter the runtime), or the largest λ if every mode is baked.
    ref = {}
    for m in sorted(modes, key=lambda m: (active_path(rt, m)[1] == "film", m.lam)):
        ref[m.width] = m
    blocks = []
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for b in batches:
        x_np = images[b]
        for w, m in sorted(ref.items()):
            def call(m=m, x_np=x_np):
                # numpy in, numpy out, like Runtime.infer (host<->device copies included on CUDA)
                with torch.no_grad():
                    out = model(torch.from_numpy(x_np).to(dev), m.lam).cpu().numpy()
                sync()
                return out

            def run(d, m=m, call=call):
                model.set_width(m.width)
                return {"latency": timed_calls(call, d)}

            blocks.append(Block(f"eager|{m.lam:g}|{m.width:g}|{b}", run,
                                {"kind": "eager", "lam": m.lam, "width": m.width, "batch": b}))
    return blocks, info


# ------------------------------------------------------------------------------------------------
# The benchmark
# ------------------------------------------------------------------------------------------------
def _pin_cpus(threads: int) -> List[int]:
    """Restrict this process (and the threads ORT/torch create later) to ``threads`` CPUs."""
    allowed = sorted(os.sched_getaffinity(0))
    chosen = allowed[:threads]
    os.sched_setaffinity(0, chosen)
    return chosen


def run_benchmark(bundle, *, backend: str = "auto", device: Optional[str] = None,
                  batches: Sequence[int] = DEFAULT_BATCHES, modes: Optional[Sequence] = None,
                  warmup_s: float = 0.2, duration_s: float = 0.5, rounds: int = 5,
                  threads: Optional[int] = None, checkpoint=None, pin: bool = False,
                  naive: bool = True, footprint: bool = True, progress: bool = True,
                  command: Optional[str] = None) -> dict:
    """Run the standard benchmark of a bundle and return the results dict (see
    docs/benchmarking.md for the keys). Nothing is written; see ``write_outputs``."""
    from oat_edge.export.bundle import load_manifest

    bundle = Path(bundle)
    if not bundle.exists():
        raise BundleError(f"bundle {bundle} does not exist (export one with `oat-edge export CKPT -o {bundle}`)")
    check_backend(backend, device)
    if rounds < 1:
        raise ConfigError(f"--rounds must be ≥ 1, got {rounds}")
    if not (duration_s > 0 and math.isfinite(duration_s)) or not (warmup_s >= 0 and math.isfinite(warmup_s)):
        raise ConfigError(f"--duration must be > 0 and --warmup ≥ 0 seconds, got {duration_s}, {warmup_s}")
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise ConfigError(f"--checkpoint {checkpoint} does not exist")
    manifest = load_manifest(bundle)
    widths = [float(w) for w in manifest["model"]["widths"]]
    if modes is None:
        mode_list = default_modes(manifest)
    elif all(isinstance(m, Mode) for m in modes):
        mode_list = [Mode(m.lam, match_width(m.width, widths)) for m in modes]
    else:
        mode_list = parse_modes(modes, widths)
    batches = check_batches(batches, manifest)
    if not batches:
        raise ConfigError("--batch needs at least one batch size")
    n_cpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = int(threads) if threads else n_cpu
    if threads < 1:
        raise ConfigError(f"--threads must be ≥ 1, got {threads}")
    pinned = _pin_cpus(threads) if pin else None
    cuda = device is not None and str(device).startswith("cuda")

    started = time.time()
    device_info = probe_device(cuda=cuda)
    from oat_edge.runtime import Runtime

    if cuda:  # the GPU peak then covers the runtime's own buffers, the rounds and the eager model
        import torch

        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    rt = Runtime(bundle, backend=backend, threads=threads, device=device)
    first_load_s = time.perf_counter() - t0
    input_shape = tuple(manifest["model"]["input_shape"])
    images = {b: _sample_images(b, input_shape) for b in batches}

    blocks = _runtime_blocks(rt, mode_list, batches, images)
    blocks += _film_vs_baked_blocks(rt, mode_list, batches, images)
    blocks.append(_switch_block(rt, mode_list, batches[0], images))
    naive_block = _naive_block(rt, mode_list, batches[0], images) if naive else None
    if naive_block is not None:
        blocks.append(naive_block)
    blocks.append(_load_block(bundle, backend, threads, device))
    eager_info = None
    if checkpoint is not None:
        import torch

        torch.set_num_threads(threads)  # same thread count as the runtime's intra-op pool
        eager, eager_info = _eager_blocks(checkpoint, rt, mode_list, batches, images, device)
        blocks += eager

    overhead = timer_overhead_ns()
    prog = None
    if progress:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        prog = Progress(TextColumn("[bold]bench[/] {task.description}"), BarColumn(),
                        TextColumn("{task.completed}/{task.total} blocks"), TimeElapsedColumn(),
                        transient=True)
        prog.start()
    try:
        raw = run_interleaved(blocks, rounds, duration_s, warmup_s, progress=prog)
    finally:
        if prog:
            prog.stop()
    stats = {b.key: aggregate(raw[b.key]) for b in blocks}
    gpu_peak = None
    if cuda:
        import torch

        gpu_peak = round(torch.cuda.max_memory_allocated() / 2**20, 2)

    fp = None
    if footprint:
        fp = measure_footprint(bundle, backend, threads, device, mode_list[:2], batches, input_shape)

    result = _assemble(manifest, bundle, rt, blocks, stats, locals())
    return result


def _throughput(batch: int, s: dict) -> float:
    return float(batch * 1e3 / s["mean_ms"]) if s["mean_ms"] > 0 else float("nan")


def _assemble(manifest, bundle, rt, blocks, stats, ctx) -> dict:
    """The results dict (the JSON file): configuration, environment, and one table per figure."""
    latency, paths, eager = [], [], []
    for b in blocks:
        meta, st = b.meta, stats[b.key]
        if meta["kind"] in ("runtime", "path", "eager"):
            s = st["latency"]
            row = {k: meta[k] for k in ("lam", "width", "batch")}
            if "path" in meta:
                row["path"] = meta["path"]
                row["path_id"] = meta["path_id"]
            row.update({k: s[k] for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "n", "rounds",
                                          "round_p50_ms")})
            row["throughput_ips"] = _throughput(meta["batch"], s)
            # max/min of the per-round medians: > UNSTABLE_SPREAD means the host moved under us
            row["round_spread"] = ratio(max(s["round_p50_ms"]), min(s["round_p50_ms"]))
            {"runtime": latency, "path": paths, "eager": eager}[meta["kind"]].append(row)

    def find(rows, lam, width, batch, path=None):
        for r in rows:
            if (abs(r["lam"] - lam) <= LAM_TOL and abs(r["width"] - width) <= 1e-6 and r["batch"] == batch
                    and (path is None or r.get("path") == path)):
                return r
        return None

    film_vs_baked = []
    for r in paths:
        if r["path"] != "film":
            continue
        bk = find(paths, r["lam"], r["width"], r["batch"], "baked")
        film_vs_baked.append({"lam": r["lam"], "width": r["width"], "batch": r["batch"],
                              "film_p50_ms": r["p50_ms"], "baked_p50_ms": bk["p50_ms"],
                              "film_over_baked": ratio(r["p50_ms"], bk["p50_ms"])})
    for r in eager:
        rr = find(latency, r["lam"], r["width"], r["batch"])
        r["runtime_p50_ms"] = rr["p50_ms"] if rr else None
        r["runtime_path"] = rr["path"] if rr else None
        r["eager_over_runtime"] = ratio(r["p50_ms"], rr["p50_ms"] if rr else None)

    sw = stats["switch"]
    swm = next(b.meta for b in blocks if b.key == "switch")

    def us(s):
        return {**{k.replace("_ms", "_us"): v * 1e3 for k, v in s.items() if k.endswith("_ms") and not isinstance(v, list)},
                "n": s["n"]}

    # The headline is the switch to a grid λ or baked mode (a lookup); off-grid λ compute their
    # FiLM vector in set_mode and are reported apart (or alone, when no grid mode was asked for).
    grid_key = "set_mode" if "set_mode" in sw else "set_mode_offgrid"
    switch = {
        "batch": swm["batch"],
        "cycle": swm["cycle"],
        "offgrid_modes": swm["offgrid"],
        "set_mode_scope": "grid/baked modes" if grid_key == "set_mode" else "off-grid λ only",
        "set_mode_us": us(sw[grid_key]),
        "set_mode_offgrid_us": us(sw["set_mode_offgrid"]) if "set_mode_offgrid" in sw else None,
        "set_mode_plus_first_infer_ms": _ms(sw["set_mode_plus_first_infer"]),
        "first_infer_after_switch_ms": _ms(sw["first_infer_after_switch"]),
        "steady_infer_ms": _ms(sw["steady_infer"]),
    }
    switch["first_infer_overhead_ms"] = (switch["set_mode_plus_first_infer_ms"]["p50_ms"]
                                         - switch["steady_infer_ms"]["p50_ms"])
    if "naive" in stats:
        nv = stats["naive"]
        switch["naive"] = {"path_ids": next(b.meta["path_ids"] for b in blocks if b.key == "naive"),
                           "open_ms": _ms(nv["naive_open"]),
                           "open_plus_first_infer_ms": _ms(nv["naive_open_plus_first_infer"])}
        switch["naive_over_set_mode_p50"] = ratio(nv["naive_open"]["p50_ms"], sw[grid_key]["p50_ms"])
        switch["naive_over_set_mode_p99"] = ratio(nv["naive_open"]["p50_ms"], sw[grid_key]["p99_ms"])
        switch["naive_over_fast_first_infer_p50"] = ratio(nv["naive_open_plus_first_infer"]["p50_ms"],
                                                          sw["set_mode_plus_first_infer"]["p50_ms"])
    else:
        switch["naive"] = None

    load = {"first_construct_s": ctx["first_load_s"], "construct_ms": _ms(stats["load"]["load"])}
    memory = {"bench_process_peak_rss_mb": peak_rss_mb(), "bench_process_rss_mb": current_rss_mb(),
              "gpu_max_allocated_mb": ctx["gpu_peak"]}
    fp = ctx["fp"]
    if fp is not None:
        load["cold_start"] = fp
        memory["runtime_process_peak_rss_mb"] = fp.get("peak_rss_mb")
        if fp.get("gpu_max_allocated_mb") is not None:
            memory["runtime_gpu_max_allocated_mb"] = fp["gpu_max_allocated_mb"]

    paths_by_id = {p["id"]: p for p in manifest.get("paths", [])}
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": ctx["command"],
        "wall_s": round(time.time() - ctx["started"], 2),
        "bundle": {
            "path": str(bundle), "arch": manifest["model"]["arch"], "widths": manifest["model"]["widths"],
            "input_shape": manifest["model"]["input_shape"], "batch_profile": manifest.get("batch"),
            "source": manifest.get("source"),
            "baked": [{"lam": e["lam"], "width": e["width"], "id": e["id"]} for e in manifest.get("baked") or []],
            "path_flops": {pid: p.get("flops") for pid, p in paths_by_id.items()},
            "has_calibration": bool(manifest.get("calibration")),
        },
        "config": {"backend": rt.backend_name, "backend_requested": ctx["backend"], "device": ctx["device"],
                   "threads": ctx["threads"], "pinned_cpus": ctx["pinned"], "batches": list(ctx["batches"]),
                   "modes": [[m.lam, m.width] for m in ctx["mode_list"]], "warmup_s": ctx["warmup_s"],
                   "duration_s": ctx["duration_s"], "rounds": ctx["rounds"],
                   "checkpoint": str(ctx["checkpoint"]) if ctx["checkpoint"] else None},
        "device_key": rt.device_key,
        "runtime": {"impl": rt.impl, "backend": rt.backend.describe(), "backend_reason": rt.backend_reason},
        "device": {**ctx["device_info"], "loadavg_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
        "versions": library_versions(),
        "timer": ctx["overhead"],
        "latency": latency,
        "film_vs_baked": film_vs_baked,
        "film_vs_baked_paths": paths,
        "eager": eager,
        "eager_info": ctx["eager_info"],
        "switch": switch,
        "load": load,
        "memory": memory,
        "calibration": manifest.get("calibration"),
    }


def _ms(s: dict) -> dict:
    return {k: s[k] for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "n", "rounds")}


# ------------------------------------------------------------------------------------------------
# Outputs: the latency profile in the bundle, JSON, report
# ------------------------------------------------------------------------------------------------
def latency_profile(result: dict) -> dict:
    """The profile ``Runtime.select`` reads (format in the brief / docs/benchmarking.md): one
    record per (mode, batch) for the path ``Runtime.infer`` runs, plus, for modes that have a
    baked path, the FiLM-as-input path of the same mode measured through ``infer_path``."""
    records = [{"lam": r["lam"], "width": r["width"], "batch": r["batch"], "path": r["path"],
                "p50_ms": r["p50_ms"], "p90_ms": r["p90_ms"], "p99_ms": r["p99_ms"],
                "throughput_ips": r["throughput_ips"]} for r in result["latency"]]
    for r in result["film_vs_baked_paths"]:
        if r["path"] == "film":
            records.append({"lam": r["lam"], "width": r["width"], "batch": r["batch"], "path": "film",
                            "p50_ms": r["p50_ms"], "p90_ms": r["p90_ms"], "p99_ms": r["p99_ms"],
                            "throughput_ips": r["throughput_ips"]})
    cfg = result["config"]
    return {"device_key": result["device_key"], "backend": cfg["backend"],
            "device": {k: result["device"].get(k) for k in ("cpu_model", "machine", "logical_cpus", "gpu", "jetson")
                       if result["device"].get(k) is not None},
            "threads": cfg["threads"], "created": result["created"],
            "bench": {"rounds": cfg["rounds"], "duration_s": cfg["duration_s"], "statistic": "median across rounds"},
            "records": records}


def write_latency_profile(result: dict, bundle, fallback_dir=None) -> dict:
    """Write BUNDLE/latency/{device_key}.json atomically. A read-only bundle gets a warning and
    the file goes to ``fallback_dir`` (the report folder) instead. Returns {"path", "in_bundle",
    "warning"}."""
    from oat_edge.fileio import atomic_write_json

    profile = latency_profile(result)
    name = f"{result['device_key']}.json"
    target = Path(bundle) / "latency" / name
    try:
        if not os.access(bundle, os.W_OK) or (target.parent.exists() and not os.access(target.parent, os.W_OK)):
            raise PermissionError(f"{target.parent} is not writable")
        atomic_write_json(target, profile)
        return {"path": str(target), "in_bundle": True, "warning": None}
    except OSError as e:
        where = Path(fallback_dir) if fallback_dir else Path.cwd()
        alt = where / "latency" / name
        atomic_write_json(alt, profile)
        msg = (f"bundle folder {bundle} is not writable ({e}); wrote the latency profile to {alt} — "
               f"copy it to {target} for Runtime.select to use it")
        warnings.warn(msg, stacklevel=2)
        return {"path": str(alt), "in_bundle": False, "warning": msg}


def write_outputs(result: dict, json_path=None, report_dir=None, write_profile: bool = True) -> dict:
    """Write the profile (into the bundle), the JSON and the markdown/PNG report; records where
    everything went in ``result["outputs"]`` and returns it."""
    from oat_edge.fileio import atomic_write_json
    from oat_edge.runtime import bench_report

    result["acceptance"] = bench_report.acceptance(result)
    outputs = {"profile": None, "json": None, "report": None, "plots": []}
    if write_profile:
        outputs["profile"] = write_latency_profile(result, result["bundle"]["path"], report_dir or
                                                   (Path(json_path).parent if json_path else None))
    if report_dir is not None:
        report_dir = Path(report_dir)
        report_dir.mkdir(parents=True, exist_ok=True)
        outputs["plots"] = [str(p) for p in bench_report.write_plots(result, report_dir)]
        result["outputs"] = outputs
        outputs["report"] = str(bench_report.write_markdown(result, report_dir / "report.md"))
        if json_path is None:
            json_path = report_dir / "bench.json"
    result["outputs"] = outputs
    if json_path is not None:
        outputs["json"] = str(json_path)
        atomic_write_json(json_path, result)
    return outputs


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------
def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="latency per mode, switch cost and baselines on this device; writes the latency profile",
        description="Benchmark a bundle on this device: p50/p90/p99 latency and throughput per (λ, width) "
        "and batch, the mode-switch cost against a naive session-per-switch, Runtime load time, peak "
        "memory, and (with --checkpoint) PyTorch eager of the conditional model — all interleaved in one "
        "run. Writes BUNDLE/latency/<device>.json for Runtime.select(max_latency_ms=...). "
        "Method: docs/benchmarking.md.")
    p.add_argument("bundle", help="bundle folder written by `oat-edge export`")
    p.add_argument("--backend", default="auto", help="runtime backend: auto, onnxruntime, torch or tensorrt (default auto)")
    p.add_argument("--device", default=None, help="cpu or cuda (cuda: --backend torch or tensorrt)")
    p.add_argument("--batch", type=int, nargs="+", default=list(DEFAULT_BATCHES), metavar="N",
                   help="batch sizes (default 1 8 32; must lie in the bundle's batch profile)")
    p.add_argument("--modes", nargs="+", default=None, metavar="λ:WIDTH",
                   help="modes to measure, e.g. 0:0.5 1:1.0 (default: the calibration grid, or the "
                   "training λ ∪ {0.15, 0.5, 0.9} × every width)")
    p.add_argument("--warmup", type=float, default=0.2, metavar="S", help="warm-up seconds per variant (default 0.2)")
    p.add_argument("--duration", type=float, default=0.5, metavar="S",
                   help="seconds per variant and round (default 0.5)")
    p.add_argument("--rounds", type=int, default=5, metavar="N", help="interleaved rounds (default 5)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="intra-op threads for ONNX Runtime and torch (default: CPUs this process may use)")
    p.add_argument("--pin", action="store_true", help="pin the process to the first N allowed CPUs (sched_setaffinity)")
    p.add_argument("--checkpoint", default=None, metavar="CKPT",
                   help="checkpoint the bundle came from: adds the PyTorch-eager baseline")
    p.add_argument("--no-naive", action="store_true", help="skip the naive session-per-switch baseline")
    p.add_argument("--json", default=None, metavar="FILE", help="write the results as JSON")
    p.add_argument("--report", default=None, metavar="DIR", help="write report.md, bench.json and PNG charts here")
    p.add_argument("--no-write-profile", action="store_true",
                   help="do not write BUNDLE/latency/<device>.json")
    p.add_argument("--note", default=None, help="free text recorded in the JSON and the report (e.g. machine state)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_cli)


def run_cli(args) -> int:
    result = run_benchmark(
        args.bundle, backend=args.backend, device=args.device, batches=args.batch, modes=args.modes,
        warmup_s=args.warmup, duration_s=args.duration, rounds=args.rounds, threads=args.threads,
        checkpoint=args.checkpoint, pin=args.pin, naive=not args.no_naive, progress=not args.quiet,
        command=_command_line(args))
    if args.note:
        result["note"] = args.note
    outputs = write_outputs(result, json_path=args.json, report_dir=args.report,
                            write_profile=not args.no_write_profile)
    from oat_edge.runtime import bench_report

    bench_report.print_summary(result)
    for what in ("profile", "json", "report"):
        v = outputs.get(what)
        if v:
            print(f"{what}: {v['path'] if isinstance(v, dict) else v}")
    return 0


def _command_line(args) -> str:
    """The command as a user would retype it (from the parsed arguments, not sys.argv)."""
    import shlex

    parts = ["oat-edge", "bench", args.bundle, "--backend", args.backend, "--batch", *map(str, args.batch),
             "--warmup", str(args.warmup), "--duration", str(args.duration), "--rounds", str(args.rounds)]
    for flag, value in (("--device", args.device), ("--threads", args.threads), ("--checkpoint", args.checkpoint),
                        ("--json", args.json), ("--report", args.report)):
        if value is not None:
            parts += [flag, str(value)]
    if args.modes:
        parts += ["--modes", *args.modes]
    for flag, on in (("--pin", args.pin), ("--no-naive", args.no_naive), ("--no-write-profile", args.no_write_profile)):
        if on:
            parts.append(flag)
    return " ".join(shlex.quote(p) for p in parts)
