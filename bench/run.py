"""``run_benchmark``: the standard benchmark of a bundle in one interleaved run, and its
results dict (the JSON file, docs/benchmarking.md); ``write_outputs`` writes the latency
profile into the bundle, the JSON and the report."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import List, Optional, Sequence

from oat_edge.bench import DEFAULT_BATCHES
from oat_edge.bench import blocks as B
from oat_edge.bench.host import current_rss_mb, library_versions, measure_footprint, peak_rss_mb, probe_device
from oat_edge.bench.scheduling import run_interleaved
from oat_edge.bench.stats import aggregate, find_row, ms_summary, ratio, throughput, timer_overhead_ns, us_summary
from oat_edge.bundle.latency import make_profile, write_latency_profile as write_profile_file
from oat_edge.bundle.manifest import load_manifest
from oat_edge.errors import BundleError, ConfigError, DependencyError, ModeError
from oat_edge.host import default_threads
from oat_edge.mode import Mode, match_width
from oat_edge.progress import progress_bar
from oat_edge.runtime import backends as registry

SCHEMA = "oat-edge/bench"
SCHEMA_VERSION = 1
# Unseen λ added to the training set when the bundle has no calibration grid (from the paper's S3).
DEFAULT_UNSEEN = (0.15, 0.5, 0.9)


def parse_modes(tokens: Sequence[str], widths: Sequence[float]) -> List[Mode]:
    """``["0:0.5", "1:1.0", "1:1.0:int8"]`` -> [Mode(0, 0.5), Mode(1, 1), Mode(1, 1, "int8")], each
    width one the bundle has (an optional third field is the precision, default fp32)."""
    modes: List[Mode] = []
    for tok in tokens:
        parts = str(tok).split(":")
        precision = parts.pop() if len(parts) == 3 else "fp32"
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise ModeError(f"--modes takes λ:width pairs such as 0:0.5 1:1.0, got {tok!r}")
        try:
            lam, width = float(parts[0]), float(parts[1])
        except ValueError:
            raise ModeError(f"--modes takes λ:width pairs of numbers such as 0.3:0.75, got {tok!r}") from None
        mode = Mode(lam, match_width(width, widths), precision.strip())
        if mode not in modes:
            modes.append(mode)
    if not modes:
        raise ModeError("--modes needs at least one λ:width pair")
    return modes

def default_modes(manifest: dict) -> List[Mode]:
    """The calibration grid when the bundle has one, otherwise (training λ ∪ a few unseen λ) ×
    every width; each at every precision the bundle has files for (``export --precision``)."""
    from oat_edge.bundle.manifest import iter_entries
    from oat_edge.precision import PRECISIONS, RANK, entry_precision

    widths = [float(w) for w in manifest["model"]["widths"]]
    have = {entry_precision(e) for e in iter_entries(manifest)}
    precisions = [p for p in PRECISIONS if p in have]
    calib = manifest.get("calibration") or {}
    modes: List[Mode] = []
    for rec in calib.get("records", []) or []:
        for p in precisions:
            m = Mode(float(rec["lam"]), match_width(rec["width"], widths), p)
            if m not in modes:
                modes.append(m)
    if not modes:
        lams = sorted(set(float(x) for x in manifest["model"]["train_lambdas"]) | set(DEFAULT_UNSEEN))
        modes = [Mode(lam, w, p) for lam in lams for w in widths for p in precisions]
    return sorted(modes, key=lambda m: (RANK[m.precision], m.width, m.lam))

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
    """The backend is registered and can run on ``device``; a CUDA device needs torch to see it."""
    registry.check_backend_name(backend)
    registry.check_device(device)
    if registry.device_kind(device) == "cuda":
        gpu = [n for n, b in registry.REGISTRY.items() if "cuda" in b.devices]
        if backend not in gpu:
            raise ConfigError(f"--device cuda needs --backend {' or '.join(gpu)}")
        try:
            import torch
        except ImportError:
            raise DependencyError("--device cuda needs torch with CUDA; torch is not installed") from None
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: torch sees no CUDA device on this machine "
                              f"(torch {torch.__version__}); benchmark the CPU backends instead")


def _pin_cpus(threads: int) -> List[int]:
    """Restrict this process (and the threads ORT/torch create later) to ``threads`` CPUs."""
    allowed = sorted(os.sched_getaffinity(0))
    chosen = allowed[:threads]
    os.sched_setaffinity(0, chosen)
    return chosen

@dataclass
class BenchRun:
    """One benchmark's settings and what it measured (the input of ``assemble``)."""

    bundle: Path
    manifest: dict
    backend: str
    device: Optional[str]
    threads: int
    pinned: Optional[List[int]]
    batches: List[int]
    modes: List[Mode]
    warmup_s: float
    duration_s: float
    rounds: int
    checkpoint: Optional[str]
    command: Optional[str]
    started: float = 0.0
    device_info: dict = field(default_factory=dict)
    first_load_s: float = 0.0
    eager_info: Optional[dict] = None
    overhead: dict = field(default_factory=dict)
    gpu_peak: Optional[float] = None
    footprint: Optional[dict] = None
    providers: Optional[list] = None  # onnxruntime execution providers (None: the CPU)

    @property
    def cuda(self) -> bool:
        return registry.device_kind(self.device) == "cuda"


def run_benchmark(bundle, *, backend: str = "auto", device: Optional[str] = None,
                  batches: Sequence[int] = DEFAULT_BATCHES, modes: Optional[Sequence] = None,
                  warmup_s: float = 0.2, duration_s: float = 0.5, rounds: int = 5,
                  threads: Optional[int] = None, checkpoint=None, pin: bool = False,
                  naive: bool = True, footprint: bool = True, progress: bool = True,
                  command: Optional[str] = None, providers=None, bake: bool = False,
                  tune_threads: bool = False) -> dict:
    """Run the standard benchmark of a bundle and return the results dict (see
    docs/benchmarking.md for the keys). Nothing is written; see ``write_outputs``."""
    run = _check(bundle, backend, device, batches, modes, warmup_s, duration_s, rounds, threads, checkpoint, pin,
                 command)
    run.started = time.time()
    run.device_info = probe_device(cuda=run.cuda)
    from oat_edge.runtime import Runtime

    if run.cuda:  # the GPU peak then covers the runtime's own buffers, the rounds and the eager model
        import torch

        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    run.providers = providers
    rt = Runtime(run.bundle, backend=backend, threads=run.threads, device=device, providers=providers)
    run.first_load_s = time.perf_counter() - t0
    rtb = None
    if bake:  # a second runtime with background baking, measured in the same rounds
        from oat_edge.bench import baking

        rtb = Runtime(run.bundle, backend=backend, threads=run.threads, device=device, providers=providers,
                      bake=baking.bench_bake_config(run.manifest))
        if rtb.bake_status != "on":
            raise ConfigError(f"--bake: background baking is {rtb.bake_status}")
    images = {b: B.sample_images(b, tuple(run.manifest["model"]["input_shape"])) for b in run.batches}
    blocks = _blocks(run, rt, naive, images, rtb)
    thread_runtimes = []
    if tune_threads:  # the same modes at every other candidate thread count, in the same rounds
        from oat_edge.bench import threads as T

        if run.cuda or providers:
            raise ConfigError("--tune-threads tunes CPU intra-op threads: it needs the CPU (no --device cuda, no providers)")
        tblocks, thread_runtimes = T.thread_blocks(
            lambda t: Runtime(run.bundle, backend=backend, threads=t, device=device), run.modes, run.batches, images,
            run.threads, default_threads())
        blocks += tblocks
    run.overhead = timer_overhead_ns()
    raw = _interleave(blocks, run, progress)
    stats = {b.key: aggregate(raw[b.key]) for b in blocks}
    if run.cuda:
        import torch

        run.gpu_peak = round(torch.cuda.max_memory_allocated() / 2**20, 2)
    if footprint:
        run.footprint = measure_footprint(run.bundle, backend, run.threads, device, run.modes[:2], run.batches,
                                          tuple(run.manifest["model"]["input_shape"]), providers=providers)
    result = assemble(run, rt, blocks, stats)
    if rtb is not None:
        from oat_edge.bench import baking

        fp = (baking.bake_footprint(run.bundle, run.threads, run.manifest["model"]["input_shape"])
              if footprint else None)
        result["baking"] = baking.summarize(blocks, stats, rtb, fp, result["switch"])
        rtb.close()
    if tune_threads:
        from oat_edge.bench import threads as T

        peaks = {t: T.measure_sgemm_peak(t) for t in T.candidate_threads(default_threads())}
        width_macs = {float(p["width"]): p.get("flops") for p in run.manifest.get("paths", [])}
        result["threads"] = T.summarize(result["latency"], blocks, stats, run.threads, width_macs, peaks)
        for r in thread_runtimes:
            r.close()
    return result


def _check(bundle, backend, device, batches, modes, warmup_s, duration_s, rounds, threads, checkpoint, pin,
           command) -> BenchRun:
    """Every argument checked before anything is measured (one clear error each)."""
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
        mode_list = [Mode(m.lam, match_width(m.width, widths), m.precision) for m in modes]
    else:
        mode_list = parse_modes(modes, widths)
    batches = check_batches(batches, manifest)
    if not batches:
        raise ConfigError("--batch needs at least one batch size")
    threads = int(threads) if threads else default_threads()
    if threads < 1:
        raise ConfigError(f"--threads must be ≥ 1, got {threads}")
    pinned = _pin_cpus(threads) if pin else None
    return BenchRun(bundle, manifest, backend, device, threads, pinned, batches, mode_list, warmup_s, duration_s,
                    rounds, checkpoint, command)


def _blocks(run: BenchRun, rt, naive: bool, images: dict, rtb=None) -> list:
    blocks = B.runtime_blocks(rt, run.modes, run.batches, images)
    blocks += B.film_vs_baked_blocks(rt, run.modes, run.batches, images)
    # Switching and the eager comparison are about λ/width: measured over the fp32 modes
    fp32 = [m for m in run.modes if m.precision == "fp32"] or list(run.modes)
    blocks.append(B.switch_block(rt, fp32, run.batches[0], images))
    naive_block = B.naive_block(rt, fp32, run.batches[0], images) if naive else None
    if naive_block is not None:
        blocks.append(naive_block)
    blocks.append(B.load_block(run.bundle, run.backend, run.threads, run.device, run.providers))
    if rtb is not None:
        from oat_edge.bench.baking import baking_blocks

        blocks += baking_blocks(rt, rtb, run.modes, run.batches, images)
    if run.checkpoint is not None:
        import torch

        torch.set_num_threads(run.threads)  # same thread count as the runtime's intra-op pool
        eager, run.eager_info = B.eager_blocks(run.checkpoint, rt, fp32, run.batches, images, run.device)
        blocks += eager
    return blocks


def _interleave(blocks, run: BenchRun, progress: bool):
    prog = None
    if progress:
        prog = progress_bar(True, "[bold]bench[/] ")
        prog.start()
    try:
        return run_interleaved(blocks, run.rounds, run.duration_s, run.warmup_s, progress=prog)
    finally:
        if prog:
            prog.stop()


# --- the results dict --------------------------------------------------------------------------
def _latency_rows(blocks, stats):
    """Rows of the latency tables: {"runtime": [...], "path": [...], "eager": [...]}."""
    tables = {"runtime": [], "path": [], "eager": []}
    for b in blocks:
        meta = b.meta
        if meta["kind"] not in tables:
            continue
        s = stats[b.key]["latency"]
        row = {k: meta[k] for k in ("lam", "width", "batch")}
        if meta.get("precision", "fp32") != "fp32":
            row["precision"] = meta["precision"]
        if "path" in meta:
            row["path"] = meta["path"]
            row["path_id"] = meta["path_id"]
        row.update({k: s[k] for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "n", "rounds",
                                      "round_p50_ms")})
        row["throughput_ips"] = throughput(meta["batch"], s)
        # max/min of the per-round medians: > stats.UNSTABLE_SPREAD means the host moved under us
        row["round_spread"] = ratio(max(s["round_p50_ms"]), min(s["round_p50_ms"]))
        tables[meta["kind"]].append(row)
    return tables


def _film_vs_baked(paths):
    out = []
    for r in paths:
        if r["path"] != "film":
            continue
        prec = r.get("precision") or "fp32"
        bk = find_row(paths, r["lam"], r["width"], r["batch"], "baked", prec)
        out.append({"lam": r["lam"], "width": r["width"], "batch": r["batch"], "film_p50_ms": r["p50_ms"],
                    "baked_p50_ms": bk["p50_ms"], "film_over_baked": ratio(r["p50_ms"], bk["p50_ms"]),
                    **({"precision": prec} if prec != "fp32" else {})})
    return out


def _eager_vs_runtime(eager, latency) -> None:
    for r in eager:
        rr = find_row(latency, r["lam"], r["width"], r["batch"])
        r["runtime_p50_ms"] = rr["p50_ms"] if rr else None
        r["runtime_path"] = rr["path"] if rr else None
        r["eager_over_runtime"] = ratio(r["p50_ms"], rr["p50_ms"] if rr else None)


def _switch(blocks, stats) -> dict:
    sw = stats["switch"]
    swm = next(b.meta for b in blocks if b.key == "switch")
    # The headline is the switch to a grid λ or baked mode (a lookup); off-grid λ compute their
    # FiLM vector in set_mode and are reported apart (or alone, when no grid mode was asked for).
    grid_key = "set_mode" if "set_mode" in sw else "set_mode_offgrid"
    switch = {
        "batch": swm["batch"],
        "cycle": swm["cycle"],
        "offgrid_modes": swm["offgrid"],
        "set_mode_scope": "grid/baked modes" if grid_key == "set_mode" else "off-grid λ only",
        "set_mode_us": us_summary(sw[grid_key]),
        "set_mode_offgrid_us": us_summary(sw["set_mode_offgrid"]) if "set_mode_offgrid" in sw else None,
        "set_mode_plus_first_infer_ms": ms_summary(sw["set_mode_plus_first_infer"]),
        "first_infer_after_switch_ms": ms_summary(sw["first_infer_after_switch"]),
        "steady_infer_ms": ms_summary(sw["steady_infer"]),
    }
    switch["first_infer_overhead_ms"] = (switch["set_mode_plus_first_infer_ms"]["p50_ms"]
                                         - switch["steady_infer_ms"]["p50_ms"])
    if "naive" in stats:
        nv = stats["naive"]
        switch["naive"] = {"path_ids": next(b.meta["path_ids"] for b in blocks if b.key == "naive"),
                           "open_ms": ms_summary(nv["naive_open"]),
                           "open_plus_first_infer_ms": ms_summary(nv["naive_open_plus_first_infer"])}
        switch["naive_over_set_mode_p50"] = ratio(nv["naive_open"]["p50_ms"], sw[grid_key]["p50_ms"])
        switch["naive_over_set_mode_p99"] = ratio(nv["naive_open"]["p50_ms"], sw[grid_key]["p99_ms"])
        switch["naive_over_fast_first_infer_p50"] = ratio(nv["naive_open_plus_first_infer"]["p50_ms"],
                                                          sw["set_mode_plus_first_infer"]["p50_ms"])
    else:
        switch["naive"] = None
    return switch


def _load_and_memory(run: BenchRun, stats):
    load = {"first_construct_s": run.first_load_s, "construct_ms": ms_summary(stats["load"]["load"])}
    memory = {"bench_process_peak_rss_mb": peak_rss_mb(), "bench_process_rss_mb": current_rss_mb(),
              "gpu_max_allocated_mb": run.gpu_peak}
    fp = run.footprint
    if fp is not None:
        load["cold_start"] = fp
        memory["runtime_process_peak_rss_mb"] = fp.get("peak_rss_mb")
        if fp.get("gpu_max_allocated_mb") is not None:
            memory["runtime_gpu_max_allocated_mb"] = fp["gpu_max_allocated_mb"]
    return load, memory


def assemble(run: BenchRun, rt, blocks, stats) -> dict:
    """The results dict (the JSON file): configuration, environment, and one table per figure."""
    tables = _latency_rows(blocks, stats)
    latency, paths, eager = tables["runtime"], tables["path"], tables["eager"]
    _eager_vs_runtime(eager, latency)
    load, memory = _load_and_memory(run, stats)
    manifest = run.manifest
    paths_by_id = {p["id"]: p for p in manifest.get("paths", [])}
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": run.command,
        "wall_s": round(time.time() - run.started, 2),
        "bundle": {
            "path": str(run.bundle), "arch": manifest["model"]["arch"], "widths": manifest["model"]["widths"],
            "input_shape": manifest["model"]["input_shape"], "batch_profile": manifest.get("batch"),
            "source": manifest.get("source"),
            "baked": [{"lam": e["lam"], "width": e["width"], "id": e["id"]} for e in manifest.get("baked") or []],
            "path_flops": {pid: p.get("flops") for pid, p in paths_by_id.items()},
            "has_calibration": bool(manifest.get("calibration")),
        },
        "config": {"backend": rt.backend_name, "backend_requested": run.backend, "device": run.device,
                   "threads": run.threads, "pinned_cpus": run.pinned, "batches": list(run.batches),
                   "modes": [[m.lam, m.width] for m in run.modes], "warmup_s": run.warmup_s,
                   "duration_s": run.duration_s, "rounds": run.rounds,
                   "checkpoint": str(run.checkpoint) if run.checkpoint else None,
                   "providers": run.providers},
        "device_key": rt.device_key,
        "runtime": {"impl": rt.impl, "backend": rt.backend.describe(), "backend_reason": rt.backend_reason},
        "device": {**run.device_info, "loadavg_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
        "versions": library_versions(),
        "timer": run.overhead,
        "latency": latency,
        "film_vs_baked": _film_vs_baked(paths),
        "film_vs_baked_paths": paths,
        "eager": eager,
        "eager_info": run.eager_info,
        "switch": _switch(blocks, stats),
        "load": load,
        "memory": memory,
        "calibration": manifest.get("calibration"),
    }


# --- outputs: the latency profile in the bundle, JSON, report ---------------------------------
def latency_profile(result: dict) -> dict:
    """The profile ``Runtime.select`` reads (format: ``oat_edge.bundle.latency``): one record per
    (mode, batch) for the path ``Runtime.infer`` runs, plus, for modes that have a baked path,
    the FiLM-as-input path of the same mode measured through ``infer_path``."""
    records = list(result["latency"]) + [r for r in result["film_vs_baked_paths"] if r["path"] == "film"]
    cfg = result["config"]
    profile = make_profile(result["device_key"], cfg["backend"], result["device"], cfg["threads"], result["created"],
                           cfg["rounds"], cfg["duration_s"], records)
    if result.get("threads"):  # --tune-threads: Runtime(threads="tuned") opens each path with its best count
        from oat_edge.bench.threads import profile_threads

        profile["path_threads"] = profile_threads(result["threads"])
    return profile


def write_latency_profile(result: dict, bundle, fallback_dir=None) -> dict:
    """Write BUNDLE/latency/{device_key}.json (see ``oat_edge.bundle.latency``)."""
    return write_profile_file(latency_profile(result), bundle, fallback_dir)


def write_outputs(result: dict, json_path=None, report_dir=None, write_profile: bool = True) -> dict:
    """Write the profile (into the bundle), the JSON and the markdown/PNG report; records where
    everything went in ``result["outputs"]`` and returns it."""
    from oat_edge.bench import report as bench_report
    from oat_edge.fileio import atomic_write_json

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
