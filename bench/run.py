"""``run_benchmark``: the standard benchmark of a bundle in one interleaved run, and its
results dict (the JSON file, docs/benchmarking.md); ``write_outputs`` writes the latency
profile into the bundle, the JSON and the report."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

from oat_edge.bench import DEFAULT_BATCHES
from oat_edge.bench.blocks import (eager_blocks, film_vs_baked_blocks, load_block, naive_block, runtime_blocks,
                                   sample_images, switch_block)
from oat_edge.bench.host import measure_footprint, probe_device
from oat_edge.bench.scheduling import run_interleaved
from oat_edge.bench.results import assemble
from oat_edge.bench.stats import aggregate, timer_overhead_ns
from oat_edge.bundle.latency import make_profile, write_latency_profile as write_profile_file
from oat_edge.bundle.manifest import load_manifest
from oat_edge.errors import BundleError, ConfigError, DependencyError, ModeError
from oat_edge.host import default_threads
from oat_edge.mode import Mode, match_width
from oat_edge.progress import progress_bar
from oat_edge.runtime import backends as registry

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
    bake_config: Optional[object] = None  # the BakeConfig of the --bake runtime

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
    run.providers = providers
    rt, rtb = _open_runtimes(run, bake)
    images = {b: sample_images(b, tuple(run.manifest["model"]["input_shape"])) for b in run.batches}
    blocks = _blocks(run, rt, naive, images, rtb)
    thread_runtimes = []
    if tune_threads:  # the same modes at every other candidate thread count, in the same rounds
        tblocks, thread_runtimes = _thread_blocks(run, images)
        blocks += tblocks
    run.overhead = timer_overhead_ns()
    raw = _interleave(blocks, run, progress)
    stats = {b.key: aggregate(raw[b.key]) for b in blocks}
    if run.cuda:
        import torch

        run.gpu_peak = round(torch.cuda.max_memory_allocated() / 2**20, 2)
    if footprint:
        run.footprint = measure_footprint(run.bundle, run.backend, run.threads, run.device, run.modes[:2],
                                          run.batches, tuple(run.manifest["model"]["input_shape"]),
                                          providers=providers)
    result = assemble(run, rt, blocks, stats)
    if rtb is not None:
        result["baking"] = _baking_section(run, blocks, stats, rtb, footprint, result["switch"])
    if tune_threads:
        result["threads"] = _threads_section(run, result, blocks, stats, thread_runtimes)
    return result


def _open_runtimes(run: BenchRun, bake: bool) -> tuple:
    """The measured Runtime (its first construction timed) and, with ``bake``, a second one with
    background baking, measured in the same rounds."""
    from oat_edge.runtime import Runtime

    if run.cuda:  # the GPU peak then covers the runtime's own buffers, the rounds and the eager model
        import torch

        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    rt = Runtime(run.bundle, backend=run.backend, threads=run.threads, device=run.device, providers=run.providers)
    run.first_load_s = time.perf_counter() - t0
    if not bake:
        return rt, None
    from oat_edge.bench import baking

    run.bake_config = baking.bench_bake_config(run.manifest)
    rtb = Runtime(run.bundle, backend=run.backend, threads=run.threads, device=run.device, providers=run.providers,
                  bake=run.bake_config)
    if rtb.bake_status != "on":
        raise ConfigError(f"--bake: background baking is {rtb.bake_status}")
    return rt, rtb


def _thread_blocks(run: BenchRun, images: dict) -> tuple:
    """(blocks, runtimes) of the modes at every other candidate intra-op thread count."""
    from oat_edge.bench import threads as thread_tuning
    from oat_edge.runtime import Runtime

    if run.cuda or run.providers:
        raise ConfigError("--tune-threads tunes CPU intra-op threads: it needs the CPU (no --device cuda, no providers)")
    return thread_tuning.thread_blocks(lambda t: Runtime(run.bundle, backend=run.backend, threads=t, device=run.device),
                           run.modes, run.batches, images, run.threads, default_threads())


def _baking_section(run: BenchRun, blocks, stats, rtb, footprint: bool, switch: dict) -> dict:
    from oat_edge.bench import baking

    fp = baking.bake_footprint(run.bundle, run.threads, run.manifest["model"]["input_shape"]) if footprint else None
    try:
        return baking.summarize(blocks, stats, rtb, fp, switch, run.bake_config)
    finally:
        rtb.close()


def _threads_section(run: BenchRun, result: dict, blocks, stats, thread_runtimes) -> dict:
    from oat_edge.bench import threads as thread_tuning

    peaks = {t: thread_tuning.measure_sgemm_peak(t) for t in thread_tuning.candidate_threads(default_threads())}
    width_macs = {float(p["width"]): p.get("flops") for p in run.manifest.get("paths", [])}
    try:
        return thread_tuning.summarize(result["latency"], blocks, stats, run.threads, width_macs, peaks)
    finally:
        for r in thread_runtimes:
            r.close()


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
    blocks = runtime_blocks(rt, run.modes, run.batches, images)
    blocks += film_vs_baked_blocks(rt, run.modes, run.batches, images)
    # Switching and the eager comparison are about λ/width: measured over the fp32 modes
    fp32 = [m for m in run.modes if m.precision == "fp32"] or list(run.modes)
    blocks.append(switch_block(rt, fp32, run.batches[0], images))
    naive_b = naive_block(rt, fp32, run.batches[0], images) if naive else None
    if naive_b is not None:
        blocks.append(naive_b)
    blocks.append(load_block(run.bundle, run.backend, run.threads, run.device, run.providers))
    if rtb is not None:
        from oat_edge.bench.baking import baking_blocks

        blocks += baking_blocks(rt, rtb, run.modes, run.batches, images)
    if run.checkpoint is not None:
        import torch

        torch.set_num_threads(run.threads)  # same thread count as the runtime's intra-op pool
        eager, run.eager_info = eager_blocks(run.checkpoint, rt, fp32, run.batches, images, run.device)
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
    from oat_edge.bench import plots, report
    from oat_edge.fileio import atomic_write_json

    outputs = {"profile": None, "json": None, "report": None, "plots": []}
    if write_profile:
        outputs["profile"] = write_latency_profile(result, result["bundle"]["path"], report_dir or
                                                   (Path(json_path).parent if json_path else None))
    if report_dir is not None:
        report_dir = Path(report_dir)
        report_dir.mkdir(parents=True, exist_ok=True)
        outputs["plots"] = [str(p) for p in plots.write_plots(result, report_dir)]
        result["outputs"] = outputs
        outputs["report"] = str(report.write_markdown(result, report_dir / "report.md"))
        if json_path is None:
            json_path = report_dir / "bench.json"
    result["outputs"] = outputs
    if json_path is not None:
        outputs["json"] = str(json_path)
        atomic_write_json(json_path, result)
    return outputs
