"""GPU verification: run every CUDA path of oat-edge once and record what it measured.

    python scripts/gpu_check.py OUT_DIR                 # everything (the GPU run, ≤ 8 min)
    python scripts/gpu_check.py OUT_DIR --quick --suite gpu   # CPU smoke run: a few minutes

``scripts/gpu_check.sh OUT_DIR`` installs the project into the machine's Python, builds the C++
extension and then runs this. Sections, in the order they run:

    env         device, driver, torch / CUDA / cuDNN / NCCL versions, libraries  -> env.json
    gpu_tests   pytest -m gpu                                                    -> tests.json
    train       OATS on digits: CUDA (AMP bf16 + channels_last) against a CPU run,
                then the demo bundle exported from the trained checkpoint         -> train.json
    backend     torch backend on CUDA: parity for every (λ, width) and off-grid λ, set_mode
                under concurrent inference, latency of CUDA graphs vs eager (CUDA events),
                switch cost, GPU memory                                         -> backend.json
    ddp         a one-process torchrun: the training step under DDP over nccl    -> ddp.json
    throughput  ResNet-34 32×32 img/s: OAT vs PGD-AT, OATS vs PGD-ATS, interleaved -> throughput.json
    bench       `oat-edge bench BUNDLE --backend torch --device cuda`            -> bench/, bench_run.json
    fast_tests  pytest -m "not slow and not gpu" (the rest of the fast suite)     -> tests.json

Then summary.json and summary.md (the acceptance figures). Every file is written
atomically as soon as its section ends, so a run cut short keeps what it finished.

Without a CUDA device every CUDA measurement is recorded as ``skipped: no CUDA device`` and
the rest still runs: the CPU training run and export, a CPU dry run of the backend checks
(torch backend on the CPU, clearly labelled — not a GPU figure), the one-process torchrun over
gloo, and the tests. Nothing here reports a GPU figure it did not measure.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from oat_edge.bench.scheduling import round_orders, timed_calls
from oat_edge.bench.stats import percentiles
from oat_edge.fileio import plain

REPO = Path(__file__).resolve().parent.parent
SECTIONS = ("env", "gpu_tests", "train", "backend", "ddp", "throughput", "bench", "fast_tests")
NO_CUDA = "no CUDA device"
BATCHES = (1, 8, 32)
OFF_GRID = (0.0123, 0.123, 0.333, 0.456, 0.777, 0.987)  # not on the bundle's 0.05 grid
BAKE = (0.0, 1.0)  # baked hot modes of the demo bundle (as demo.sh)
PARITY_TOL = 1e-4  # the export gate's bar (export/parity.py), for comparison
GRAPH_GOAL = 2.0  # CUDA graphs ≥ 2× faster than eager at batch 1
THROUGHPUT_GOAL = 1.15  # OAT/PGD-AT and OATS/PGD-ATS time per image
MATCH_TOL = 1e-5  # a concurrent frame "ran in mode m" when its logits match m's within this

# Per-section sizes: (full run on a GPU machine, --quick).
SIZES = {
    "epochs": (5, 1),
    "train_images": (None, 256),  # None: the whole digits train split (1437)
    "parity_images": (64, 32),
    "frames": (4000, 400),
    "latency_calls": (200, 20),
    "latency_rounds": (5, 2),
    "switch_calls": (5000, 500),
    "throughput_batch": (128, 32),
    "throughput_iters": (8, 1),
    "throughput_rounds": (3, 2),  # 5 took 100 s of the 8 minutes on the H100; the fast suite needs them
}


# ------------------------------------------------------------------------------------------------
# Records
# ------------------------------------------------------------------------------------------------
def skipped(reason: str, **extra) -> dict:
    return {"status": "skipped", "reason": reason, **extra}


def failed(reason: str, **extra) -> dict:
    return {"status": "failed", "reason": reason, **extra}


class Context:
    """What every section needs: folders, the device, sizes, the time budget, results so far."""

    def __init__(self, args):
        self.out: Path = args.out_dir
        self.logs = self.out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.quick: bool = args.quick
        self.suite: str = args.suite
        self.python: str = sys.executable
        self.deadline = time.monotonic() + args.budget_s
        self.results: Dict[str, dict] = {}
        self.work: Path = args.work_dir
        self.cuda = False
        self.cuda_why = "--device cpu"  # why there is none
        if args.device != "cpu":
            try:
                import torch

                self.cuda = bool(torch.cuda.is_available())
                self.cuda_why = f"torch {torch.__version__} sees none"
            except ImportError:
                self.cuda_why = "torch is not installed"
        self.cuda_reason = f"{NO_CUDA} ({self.cuda_why})"
        if args.device == "cuda" and not self.cuda:
            raise SystemExit(f"gpu_check: --device cuda, but {self.cuda_reason}")
        # A bundle given on the command line (with the checkpoint it came from) replaces the
        # one the train section would export.
        self.ckpt: Optional[Path] = args.checkpoint
        self.bundle: Optional[Path] = args.bundle
        self.given_bundle = args.bundle is not None

    def size(self, key: str):
        return SIZES[key][1 if self.quick else 0]

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def write(self, name: str, obj) -> Path:
        from oat_edge.fileio import atomic_write_json

        path = self.out / name
        atomic_write_json(path, plain(obj, nan_as_none=True))
        return path


def missing_modules(*names: str) -> List[str]:
    return [n for n in names if importlib.util.find_spec(n) is None]


def _run(cmd: List[str], log: Path, timeout: float, env: Optional[dict] = None, cwd: Path = REPO) -> dict:
    """Run a command with its output in ``log``; kill its whole process group on timeout."""
    start = time.monotonic()
    with open(log, "w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=str(cwd), env=env,
                             start_new_session=True)
        try:
            rc = p.wait(timeout=max(1.0, timeout))
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            rc = p.wait()
            timed_out = True
    tail = log.read_text(errors="replace").splitlines()[-15:]
    return {"cmd": cmd, "rc": rc, "timed_out": timed_out, "seconds": round(time.monotonic() - start, 2),
            "log": str(log.relative_to(log.parent.parent)), "tail": tail}


# ------------------------------------------------------------------------------------------------
# env
# ------------------------------------------------------------------------------------------------
def _cmd_output(cmd: List[str], timeout: float = 20) -> Optional[str]:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as e:
        return f"not available: {e.__class__.__name__}: {e}"
    return (p.stdout or p.stderr).strip() or f"exit {p.returncode}"


NVSMI_FIELDS = ("name", "driver_version", "memory.total", "memory.used", "pstate", "clocks.sm", "clocks.max.sm",
                "clocks.mem", "power.limit", "temperature.gpu", "persistence_mode")


def section_env(ctx: Context) -> dict:
    from oat_edge import __version__
    from oat_edge.bench.host import library_versions, probe_device
    from oat_edge.runtime import extension_available

    env: Dict[str, Any] = {"status": "ok", "python": sys.executable, "python_version": platform.python_version(),
                           "platform": platform.platform(), "oat_edge": __version__}
    env["git"] = {"commit": _cmd_output(["git", "-C", str(REPO), "rev-parse", "HEAD"]),
                  "dirty": bool((_cmd_output(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"])
                                 or "").strip())}
    env["extension"] = {"impl": "ext" if extension_available() else "python"}  # scripts/gpu_check.sh logs why not
    env["libraries"] = library_versions()
    env["missing_modules"] = missing_modules("torch", "onnx", "onnxscript", "onnxsim", "sklearn", "scipy",
                                             "matplotlib", "rich", "psutil", "pytest", "pytest_timeout", "xdist",
                                             "tensorrt", "pycuda")
    if shutil.which("nvidia-smi"):
        q = _cmd_output(["nvidia-smi", "--query-gpu=" + ",".join(NVSMI_FIELDS), "--format=csv,noheader"])
        rows = [dict(zip(NVSMI_FIELDS, (v.strip() for v in line.split(",")))) for line in (q or "").splitlines()
                if line.count(",") == len(NVSMI_FIELDS) - 1]
        env["nvidia_smi"] = rows or q
        (ctx.logs / "nvidia-smi.txt").write_text((_cmd_output(["nvidia-smi"]) or "") + "\n")
    else:
        env["nvidia_smi"] = "nvidia-smi: not found"
    nvcc = shutil.which("nvcc")
    env["nvcc"] = (_cmd_output([nvcc, "--version"]) or "").splitlines()[-2:] if nvcc else "nvcc: not found"
    try:
        import torch

        t: Dict[str, Any] = {"version": torch.__version__, "cuda": torch.version.cuda,
                             "cuda_available": torch.cuda.is_available(), "threads": torch.get_num_threads()}
        if ctx.cuda:
            p = torch.cuda.get_device_properties(0)
            t.update(device_count=torch.cuda.device_count(), device=p.name, compute_capability=f"{p.major}.{p.minor}",
                     multiprocessors=p.multi_processor_count, memory_gib=round(p.total_memory / 2**30, 2),
                     cudnn=torch.backends.cudnn.version(), bf16_supported=torch.cuda.is_bf16_supported(),
                     tf32={"cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                           "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
                           "float32_matmul_precision": torch.get_float32_matmul_precision()})
            try:
                v = torch.cuda.nccl.version()
                t["nccl"] = ".".join(map(str, v)) if isinstance(v, (tuple, list)) else str(v)
            except Exception as e:  # noqa: BLE001 - a version probe must not stop the run
                t["nccl"] = f"unknown: {e}"
        else:
            t["cuda_skipped"] = ctx.cuda_reason
        env["torch"] = t
    except ImportError:
        env["torch"] = "not installed"
    env["host"] = probe_device(cuda=False)
    return env


# ------------------------------------------------------------------------------------------------
# pytest
# ------------------------------------------------------------------------------------------------
def _junit_counts(path: Path) -> Optional[dict]:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    tot = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    tot["passed"] = tot["tests"] - tot["failures"] - tot["errors"] - tot["skipped"]
    failing = []
    for case in root.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failing.append(f"{case.get('classname')}::{case.get('name')}")
    tot["failing"] = failing[:50]
    skip_reasons = sorted({(c.find("skipped").get("message") or "")[:160] for c in root.iter("testcase")
                           if c.find("skipped") is not None})
    tot["skip_reasons"] = skip_reasons[:20]
    return tot


_RESULT_LINE = re.compile(r"(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS) (tests/\S+)|(tests/\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)")


def _log_counts(log: Path) -> Optional[dict]:
    """Counts read from a ``pytest -v`` log, for a run that ended before writing its JUnit file
    (``partial``: tests that had not finished are not counted)."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return None
    results: Dict[str, str] = {}
    for m in _RESULT_LINE.finditer(text):
        outcome, test = (m.group(1), m.group(2)) if m.group(1) else (m.group(4), m.group(3))
        results[test] = outcome
    if not results:
        return None
    outcomes = list(results.values())
    failing = sorted(t for t, o in results.items() if o in ("FAILED", "ERROR"))
    return {"tests": len(outcomes), "failures": outcomes.count("FAILED"), "errors": outcomes.count("ERROR"),
            "skipped": outcomes.count("SKIPPED"), "passed": outcomes.count("PASSED") + outcomes.count("XPASS"),
            "failing": failing[:50], "skip_reasons": [], "partial": True}


def run_pytest(ctx: Context, name: str, marker: str, timeout: float, workers: int = 0) -> dict:
    if missing_modules("pytest"):
        return skipped("pytest is not installed in this Python")
    xml = ctx.logs / f"pytest_{name}.xml"
    # -v: one line per test as it ends, so a run cut short by the budget (no JUnit file yet)
    # still says which tests failed (read back by _log_counts).
    cmd = [ctx.python, "-m", "pytest", "-m", marker, "-p", "no:cacheprovider", "-v", f"--junitxml={xml}"]
    if workers > 1 and not missing_modules("xdist"):
        cmd += ["-n", str(workers)]
    if xml.exists():
        xml.unlink()
    log = ctx.logs / f"pytest_{name}.log"
    r = _run(cmd, log, timeout)
    counts = _junit_counts(xml) or _log_counts(log)
    rec = {"marker": marker, "run": r, "counts": counts, "junit": str(xml.relative_to(ctx.out))}
    if r["timed_out"]:
        return failed(f"pytest timed out after {r['seconds']:.0f} s (budget)", **rec)
    if r["rc"] == 5:
        return failed("pytest collected no tests", **rec)
    if r["rc"] != 0 or counts is None:
        return failed(f"pytest exit {r['rc']}: {counts and (counts['failures'] + counts['errors'])} failing", **rec)
    status = {"status": "ok"}
    if counts["tests"] and counts["skipped"] == counts["tests"]:
        status["note"] = f"all {counts['tests']} skipped"
    return {**status, **rec}


def section_gpu_tests(ctx: Context) -> dict:
    return run_pytest(ctx, "gpu", "gpu", timeout=min(120.0, max(30.0, ctx.remaining())))


def section_fast_tests(ctx: Context) -> dict:
    if ctx.suite != "fast":
        return skipped(f"--suite {ctx.suite}")
    left = ctx.remaining() - 5
    if left < 30:
        return skipped(f"time budget: {left:.0f} s left")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    # Many workers: on the GPU machine (16 cores) the fast suite is what runs out of budget.
    workers = min(14, cpus - 2) if cpus >= 4 else 0
    r = run_pytest(ctx, "fast", "not slow and not gpu", timeout=left, workers=workers)
    r["xdist_workers"] = workers if workers > 1 and not missing_modules("xdist") else 0
    return r


# ------------------------------------------------------------------------------------------------
# train: OATS on digits, CUDA (AMP + channels_last) against the CPU; the demo bundle
# ------------------------------------------------------------------------------------------------
def _cpu_train_threads(quick: bool) -> int:
    """Threads for the CPU reference run: few (the 8×8 model gains nothing from many threads,
    and on a busy machine multi-threaded torch stalls at barriers); 1 for --quick."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 1 if quick else max(1, min(4, cpus))


def _train_run(ctx: Context, device: str, out: Path, amp: str) -> dict:
    import torch

    from oat_edge.training.config import TrainConfig
    from oat_edge.training.trainers import Trainer

    epochs = ctx.size("epochs")
    cfg = TrainConfig(dataset="digits", method="oats", epochs=epochs, device=device, amp=amp, progress=False,
                      max_train_images=ctx.size("train_images"), eval_every=epochs, eval_max_images=360,
                      threads=None if device == "cuda" else _cpu_train_threads(ctx.quick), out=str(out))
    start = time.perf_counter()
    trainer = Trainer(cfg)
    try:
        # The largest conv weight: a 1-channel or 1×1 kernel is contiguous in both formats.
        conv = max((p for p in trainer.model.parameters() if p.dim() == 4), key=lambda p: p.numel())
        cl = conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
        info = {"device": str(trainer.device), "amp": str(trainer.amp_dtype).replace("torch.", "") if trainer.amp_dtype
                else "off", "channels_last": bool(cl),
                "grad_scaler": trainer.scaler.is_enabled(), "steps_per_epoch": trainer.steps_per_epoch,
                "train_images": len(trainer.train_set), "epochs": epochs, "batch_size": trainer.cfg.batch_size,
                "torch_threads": torch.get_num_threads()}
        trainer.fit()
    finally:
        trainer.ctx.close()
    info["seconds"] = round(time.perf_counter() - start, 2)
    info["history"] = [{k: r[k] for k in ("epoch", "loss", "clean_acc", "adv_acc", "seconds", "images_per_s")}
                       for r in trainer.history]
    info["eval"] = trainer.last_eval
    info["checkpoint"] = str(out)
    return info


def _eval_at(run: dict, lam: float, width: float, key: str):
    for r in run.get("eval") or []:
        if abs(r["lam"] - lam) < 1e-9 and abs(r["width"] - width) < 1e-9:
            if key == "sa":
                return r["sa"]
            # The training attack's RA (its name follows the recipe: pgd10 on digits), or the
            # worst case when there are several.
            ra = r["ra"]
            return ra.get("worst_case", next(iter(ra.values()), None))
    return None


def compare_runs(gpu: dict, cpu: dict, loss_rtol: float = 0.25, acc_atol: float = 0.10) -> dict:
    """Sanity of the CUDA run against the CPU run: last-epoch loss within ``loss_rtol`` and SA
    (λ = 0) / RA (λ = 1, the training attack) at full width within ``acc_atol``. Loose on purpose: AMP, TF32
    and other kernels change the trajectory; a broken CUDA path (no learning, NaN) fails it."""
    lg, lc = gpu["history"][-1]["loss"], cpu["history"][-1]["loss"]
    checks = {"last_loss": {"cuda": lg, "cpu": lc, "rel_diff": abs(lg - lc) / max(abs(lc), 1e-12), "tol": loss_rtol}}
    checks["last_loss"]["ok"] = bool(np.isfinite(lg) and checks["last_loss"]["rel_diff"] <= loss_rtol)
    for name, lam, key in (("sa_lambda0_w1", 0.0, "sa"), ("ra_lambda1_w1", 1.0, "ra")):
        g, c = _eval_at(gpu, lam, 1.0, key), _eval_at(cpu, lam, 1.0, key)
        ok = g is not None and c is not None and abs(g - c) <= acc_atol
        checks[name] = {"cuda": g, "cpu": c, "abs_diff": None if g is None or c is None else abs(g - c),
                        "tol": acc_atol, "ok": bool(ok)}
    return {"ok": all(v["ok"] for v in checks.values()), "checks": checks}


def export_demo_bundle(ckpt: Path, out: Path, quick: bool) -> dict:
    from oat_edge.export import export_bundle, load_manifest

    start = time.perf_counter()
    # Batch profile up to 64: the parity check runs 64 images in one call.
    export_bundle(ckpt, out, batch=(1, 8, 64), bake=BAKE, tensorrt="off", force=True, progress=False,
                  parity_images=32 if quick else 64)
    m = load_manifest(out, verify_hashes=False)
    files = list(m["paths"]) + list(m.get("baked") or [])
    ops = sorted({op for p in files for op in p.get("ops", [])})
    return {"bundle": str(out), "seconds": round(time.perf_counter() - start, 2), "paths": len(m["paths"]),
            "baked_paths": len(m.get("baked") or []), "widths": m["model"]["widths"], "baked": list(BAKE),
            "ops": ops, "simplified_by_onnxsim": all(bool(p.get("simplified")) for p in files)}


def section_train(ctx: Context) -> dict:
    miss = missing_modules("torch", "sklearn")
    if miss:
        return skipped(f"missing Python modules: {', '.join(miss)}")
    rec: Dict[str, Any] = {"status": "ok"}
    ctx.work.mkdir(parents=True, exist_ok=True)
    cuda_ok = False
    if ctx.cuda:
        try:
            rec["cuda"] = _train_run(ctx, "cuda", ctx.work / "ckpt_cuda.pt", amp="bf16")
            cuda_ok = True
        except Exception as e:  # noqa: BLE001 - recorded; the CPU run and the export still go on
            import traceback

            (ctx.logs / "train_cuda.traceback.txt").write_text(traceback.format_exc())
            rec["cuda"] = failed(f"{e.__class__.__name__}: {str(e)[:300]}", traceback="logs/train_cuda.traceback.txt")
            rec["status"], rec["reason"] = "failed", "training on CUDA raised (see cuda)"
    else:
        rec["cuda"] = skipped(ctx.cuda_reason)
    rec["cpu"] = _train_run(ctx, "cpu", ctx.work / "ckpt_cpu.pt", amp="off")
    if cuda_ok:
        rec["sanity"] = compare_runs(rec["cuda"], rec["cpu"])
        if not rec["sanity"]["ok"]:
            rec["status"] = "failed"
            rec["reason"] = "the CUDA run does not agree with the CPU run (see sanity)"
    if ctx.given_bundle:
        rec["bundle"] = {"given": str(ctx.bundle), "checkpoint": str(ctx.ckpt)}
        return rec
    # The demo bundle comes from the CUDA checkpoint; from the CPU one if CUDA training failed.
    ctx.ckpt = Path(rec["cuda"]["checkpoint"] if cuda_ok else rec["cpu"]["checkpoint"])
    if missing_modules("onnx", "onnxscript"):
        rec["bundle"] = skipped("onnx/onnxscript missing: no export, so no demo bundle")
        return rec
    rec["bundle"] = export_demo_bundle(ctx.ckpt, ctx.work / "bundle", ctx.quick)
    rec["bundle"]["from"] = "cuda" if cuda_ok else "cpu"
    ctx.bundle = ctx.work / "bundle"
    return rec


# ------------------------------------------------------------------------------------------------
# backend: the torch backend on CUDA
# ------------------------------------------------------------------------------------------------
def parity_images(n: int, input_shape) -> np.ndarray:
    try:
        from oat_edge.training.datasets import load_dataset

        if tuple(input_shape) == (1, 8, 8):
            return np.ascontiguousarray(load_dataset("digits", "test").images[:n].numpy())
    except Exception:  # noqa: BLE001 - no sklearn: random images still test parity
        pass
    return np.random.default_rng(0).random((n,) + tuple(input_shape), dtype=np.float32)


def check_parity(rt, model, images: np.ndarray, modes, cuda_tensor: bool = False) -> dict:
    """Runtime logits against the PyTorch model (CPU, float32) for every mode: the worst
    |Δlogit| and top-1 agreement, numpy in/out (and, on CUDA, a CUDA tensor in and out)."""
    from oat_edge.export.parity import compare, torch_logits

    rows, worst, worst_top1 = [], 0.0, 1.0
    x_dev = None
    if cuda_tensor:
        import torch

        x_dev = torch.from_numpy(images).to(rt.device)
    for lam, width in modes:
        ref = torch_logits(model, images, lam, width)
        rt.set_mode(lam, width)
        outs = {"numpy": rt.infer(images)}
        if x_dev is not None:
            outs["cuda_tensor"] = rt.infer(x_dev).cpu().numpy()
        row = {"lam": lam, "width": width, "path": rt.path_for(lam, width)}
        for k, out in outs.items():
            c = compare(ref, out)
            row[k] = c["max_abs_diff"]
            worst = max(worst, c["max_abs_diff"])
            worst_top1 = min(worst_top1, c["top1_agreement"])
        rows.append(row)
    worst_row = max(rows, key=lambda r: max(v for k, v in r.items() if k in ("numpy", "cuda_tensor")))
    return {"modes": len(rows), "images": int(images.shape[0]), "worst_abs_diff": worst, "worst_top1": worst_top1,
            "worst_mode": {k: worst_row[k] for k in ("lam", "width", "path")}, "rows": rows}


def check_concurrency(rt, modes, images: np.ndarray, frames: int, threads: int = 2, cuda_tensor: bool = False) -> dict:
    """``threads`` threads infer single images while a control thread calls set_mode at random
    over ``modes``. A frame passes when its logits equal the precomputed logits of the mode
    ``infer_with_mode`` reports (within MATCH_TOL); one that matches no mode ran in a mixture."""
    torch = None
    if cuda_tensor:
        import torch
    expected = np.empty((len(modes), len(images), rt.num_classes), np.float32)
    for i, m in enumerate(modes):
        rt.set_mode(*m)
        for k in range(len(images)):
            expected[i, k] = rt.infer(images[k:k + 1])[0]
    sep = [float(np.abs(expected[i, k] - expected[j, k]).max()) for k in range(len(images))
           for i in range(len(modes)) for j in range(i + 1, len(modes))]
    x_dev = [torch.from_numpy(images[k:k + 1]).to(rt.device) for k in range(len(images))] if cuda_tensor else None
    stop = threading.Event()
    results: List[list] = [[] for _ in range(threads)]
    errors: List[str] = []
    switches = [0]

    def control():
        rng = np.random.default_rng(0)
        while not stop.is_set():
            rt.set_mode(*modes[int(rng.integers(len(modes)))])
            switches[0] += 1

    def perceive(t):
        try:
            for f in range(frames // threads):
                k = (f * 7 + t) % len(images)
                if x_dev is not None and f % 2:
                    y, mode = rt.infer_with_mode(x_dev[k])
                    y = y.cpu().numpy()
                else:
                    y, mode = rt.infer_with_mode(images[k:k + 1])
                results[t].append((k, y[0], (mode.lam, mode.width)))
        except Exception as e:  # noqa: BLE001 - recorded, and the check fails
            errors.append(f"thread {t}: {e.__class__.__name__}: {e}")

    ctl = threading.Thread(target=control)
    workers = [threading.Thread(target=perceive, args=(t,)) for t in range(threads)]
    start = time.perf_counter()
    ctl.start()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    stop.set()
    ctl.join()
    seconds = time.perf_counter() - start
    keys = np.asarray(modes, dtype=np.float64)

    def index(reported) -> int:  # the mode as published (λ may come back through float32)
        return int(np.abs(keys - np.asarray(reported, dtype=np.float64)).sum(axis=1).argmin())

    no_mode = wrong = 0
    seen = set()
    for k, y, reported in (r for rs in results for r in rs):
        d = np.abs(expected[:, k] - y).max(axis=1)
        i = index(reported)
        if d.min() > MATCH_TOL:
            no_mode += 1
        elif d[i] > MATCH_TOL:
            wrong += 1
        seen.add(i)
    n = sum(len(r) for r in results)
    ok = not errors and n == (frames // threads) * threads and no_mode == 0 and wrong == 0
    return {"ok": ok, "frames": n, "threads": threads, "switches": switches[0], "modes": len(modes),
            "modes_seen": len(seen), "frames_matching_no_mode": no_mode, "frames_with_wrong_mode": wrong,
            "errors": errors[:5], "min_mode_separation": min(sep) if sep else None, "match_tol": MATCH_TOL,
            "inputs": "numpy and CUDA tensors alternating" if cuda_tensor else "numpy",
            "seconds": round(seconds, 2)}


def _time_calls(fn, n: int, cuda: bool) -> Dict[str, list]:
    """Per-call times in ms: CUDA events around each call (the GPU's view, launch gaps
    included) when ``cuda``, and the host's perf_counter always. Synchronised per call."""
    host, dev = [], []
    if cuda:
        import torch

        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for _ in range(n):
            t0 = time.perf_counter_ns()
            start.record()
            fn()
            end.record()
            end.synchronize()
            host.append((time.perf_counter_ns() - t0) / 1e6)
            dev.append(start.elapsed_time(end))
        return {"cuda_events_ms": dev, "host_ms": host}
    return {"host_ms": [ns / 1e6 for ns in timed_calls(fn, 0.0, min_iters=n, rewarm=0)]}


def measure_latency(variants: Dict[str, Callable[[Any], Any]], inputs: Dict[int, Any], calls: int, rounds: int,
                    cuda: bool) -> dict:
    """Interleaved rounds over (variant, batch): each round runs every block once, in the bench's
    rotated order (``round_orders``); per block p50/p99 over all rounds' calls."""
    blocks = [(v, b) for v in variants for b in inputs]
    samples: Dict[tuple, Dict[str, list]] = {blk: {} for blk in blocks}
    for v, b in blocks:  # warm-up (and, for CUDA graphs, any capture not done yet)
        for _ in range(3):
            variants[v](inputs[b])
    if cuda:
        import torch

        torch.cuda.synchronize()
    for order in round_orders(len(blocks), rounds):
        for v, b in (blocks[i] for i in order):
            fn = variants[v]
            x = inputs[b]
            for k, vals in _time_calls(lambda: fn(x), calls, cuda).items():
                samples[(v, b)].setdefault(k, []).extend(vals)
    rows = []
    for (v, b), s in samples.items():
        row = {"variant": v, "batch": b}
        for k, vals in s.items():
            row[k] = percentiles(vals)
        rows.append(row)
    return {"calls_per_round": calls, "rounds": rounds, "rows": rows}


def graph_speedup(lat: dict, key: str) -> Dict[str, Optional[float]]:
    """eager p50 / CUDA-graphs p50 per batch (from the same interleaved run)."""
    by = {(r["variant"], r["batch"]): r for r in lat["rows"]}
    out = {}
    for b in sorted({r["batch"] for r in lat["rows"]}):
        g, e = by.get(("runtime_graphs", b)), by.get(("runtime_eager", b))
        out[str(b)] = e[key]["p50"] / g[key]["p50"] if g and e and key in g and key in e else None
    return out


def measure_switch(rt, modes_grid, modes_offgrid, n: int, cuda: bool) -> dict:
    """set_mode alone (µs, host) over cycles whose consecutive modes change the path, grid/baked
    and off-grid apart; then the first inference after a switch against the next one (ms)."""
    out = {}
    for name, cycle in (("grid_or_baked", modes_grid), ("off_grid", modes_offgrid)):
        modes = itertools.cycle(cycle)
        times = timed_calls(lambda: rt.set_mode(*next(modes)), 0.0, min_iters=n, rewarm=0)
        out[f"set_mode_{name}_us"] = percentiles([ns / 1e3 for ns in times])
    import torch

    x = torch.from_numpy(np.random.default_rng(1).random((1,) + rt.input_shape, dtype=np.float32))
    if cuda:
        x = x.to(rt.device)
    first, steady = [], []
    for i in range(min(n, 200)):
        rt.set_mode(*modes_grid[i % len(modes_grid)])
        first.append(_time_calls(lambda: rt.infer(x), 1, cuda)["cuda_events_ms" if cuda else "host_ms"][0])
        steady.append(_time_calls(lambda: rt.infer(x), 1, cuda)["cuda_events_ms" if cuda else "host_ms"][0])
    out["first_infer_after_switch_ms"] = percentiles(first)
    out["steady_infer_ms"] = percentiles(steady)
    out["timer"] = "CUDA events" if cuda else "perf_counter"
    return out


def _gpu_mem() -> dict:
    import torch

    free, total = torch.cuda.mem_get_info()
    return {"allocated_mb": round(torch.cuda.memory_allocated() / 2**20, 2),
            "reserved_mb": round(torch.cuda.memory_reserved() / 2**20, 2),
            "max_allocated_mb": round(torch.cuda.max_memory_allocated() / 2**20, 2),
            "device_used_mb": round((total - free) / 2**20, 1)}


def _part(rec: dict, key: str, fn: Callable[[], Any], errors: List[str]):
    """rec[key] = fn(); an exception is recorded there (with its traceback) instead of ending
    the section, so one broken check on the GPU does not cost the figures of the others."""
    import traceback

    try:
        rec[key] = fn()
        return rec[key]
    except Exception as e:  # noqa: BLE001 - recorded and reported as a failure
        rec[key] = failed(f"{e.__class__.__name__}: {str(e)[:300]}", traceback=traceback.format_exc()[-3000:])
        errors.append(key)
        return None


def backend_checks(bundle: Path, ckpt: Path, device: str, quick: bool, sizes: Callable[[str], Any]) -> dict:
    """Every check of the backend section on ``device`` ("cuda", or "cpu" for the dry run).
    ``rec["errors"]`` lists the checks that raised (each recorded as failed in its place)."""
    import torch

    from oat_edge.checkpoint import load_model
    from oat_edge.export import load_manifest
    from oat_edge.runtime import Runtime

    cuda = device.startswith("cuda")
    model, _ = load_model(ckpt)
    model.eval()
    batch = load_manifest(bundle, verify_hashes=False)["batch"]
    batches = [b for b in BATCHES if int(batch["min"]) <= b <= int(batch["max"])]
    errors: List[str] = []
    rec: Dict[str, Any] = {"device": device, "bundle": str(bundle), "batches": batches,
                           "batches_outside_bundle_profile": [b for b in BATCHES if b not in batches],
                           "errors": errors}
    opts = {"graph_batches": batches}
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        rec["memory"] = {"before": _gpu_mem()}
    t0 = time.perf_counter()
    # CPU dry run: one thread (a busy shared machine makes multi-threaded torch stall at barriers).
    threads = None if cuda else 1
    rt = _part(rec, "runtime", lambda: Runtime(bundle, backend="torch", device=device, threads=threads,
                                               backend_options=opts), errors)
    if rt is None:
        return rec  # nothing else can run without it
    rec["runtime"] = {**rt.describe(), "runner": rt.backend.describe(),
                      "construct_s": round(time.perf_counter() - t0, 3)}
    if cuda:
        torch.cuda.synchronize()
        rec["memory"]["after_construct_graphs"] = _gpu_mem()
        rec["memory"]["runtime_allocated_mb"] = round(rec["memory"]["after_construct_graphs"]["allocated_mb"]
                                                      - rec["memory"]["before"]["allocated_mb"], 2)

    images = parity_images(min(sizes("parity_images"), int(batch["max"])), rt.input_shape)
    grid = [(m.lam, m.width) for m in rt.modes]
    if quick:
        grid = grid[::3] + [m for m in grid if m[0] in BAKE]
    off = [(lam, w) for lam in OFF_GRID for w in rt.widths]
    parity: Dict[str, Any] = {"reference": "PyTorch model (the checkpoint), CPU float32"}
    rec["parity"] = parity
    _part(parity, "grid", lambda: check_parity(rt, model, images, grid, cuda_tensor=cuda), errors)
    _part(parity, "off_grid", lambda: check_parity(rt, model, images, off, cuda_tensor=cuda), errors)
    eager = None
    if cuda:
        # The same with the graphs off (eager interpretation) and with TF32 off (graphs
        # captured after the switch), to attribute a miss; and torch's own CUDA model.
        eager = _part(rec, "eager_runtime", lambda: Runtime(bundle, backend="torch", device=device,
                                                            backend_options={"cuda_graphs": False}), errors)
        if eager is not None:
            rec["eager_runtime"] = {**eager.describe(), "runner": eager.backend.describe()}
            _part(parity, "eager_grid", lambda: check_parity(eager, model, images, grid), errors)
        saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        parity["tf32_default"] = {"cuda.matmul.allow_tf32": saved[0], "cudnn.allow_tf32": saved[1]}

        def tf32_off():
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
            try:
                strict = Runtime(bundle, backend="torch", device=device, backend_options=opts)
                try:
                    return check_parity(strict, model, images, grid + off)
                finally:
                    strict.close()
            finally:
                torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved

        _part(parity, "tf32_off_grid", tf32_off, errors)
        _part(parity, "pytorch_model_cuda_vs_cpu",
              lambda: _model_cuda_drift(model, images, grid[:: max(1, len(grid) // 8)]), errors)

    conc_modes = [(lam, w) for lam in (0.0, 0.1, 0.25, 1.0) + OFF_GRID[1:3] for w in rt.widths]
    _part(rec, "concurrency", lambda: check_concurrency(rt, conc_modes, images[:8], sizes("frames"), threads=2,
                                                        cuda_tensor=cuda), errors)

    # Latency: CUDA graphs vs eager interpretation of the same ONNX graphs, and the PyTorch
    # model itself (eager, FiLM generators evaluated per call); CUDA tensors in and out.
    lam, width = 0.5, max(rt.widths)  # an unbaked λ: the generic FiLM path

    def latency():
        variants: Dict[str, Callable] = {}
        rt.set_mode(lam, width)
        variants["runtime_graphs" if cuda else "runtime_cpu"] = rt.infer
        if eager is not None:
            eager.set_mode(lam, width)
            variants["runtime_eager"] = eager.infer
        ref_model = model.to(device)
        ref_model.set_width(width)

        def model_eager(x):
            with torch.no_grad():
                return ref_model(x, lam)

        variants["pytorch_model_eager"] = model_eager
        rng = np.random.default_rng(0)
        inputs = {b: torch.from_numpy(rng.random((b,) + rt.input_shape, dtype=np.float32)).to(device) for b in batches}
        lat = measure_latency(variants, inputs, sizes("latency_calls"), sizes("latency_rounds"), cuda)
        lat["mode"] = {"lam": lam, "width": width, "path": rt.path_for(lam, width)}
        lat["inputs"] = "CUDA tensors in and out" if cuda else "CPU tensors in and out"
        if cuda:
            lat["graphs_speedup_p50"] = graph_speedup(lat, "cuda_events_ms")
            lat["graphs_speedup_p50_host"] = graph_speedup(lat, "host_ms")
        return lat

    _part(rec, "latency", latency, errors)
    if cuda:
        def latency_numpy():  # numpy in / numpy out (host copies included): the robot-loop case
            rng = np.random.default_rng(0)
            np_inputs = {b: rng.random((b,) + rt.input_shape, dtype=np.float32) for b in batches}
            variants = {"runtime_graphs": rt.infer}
            if eager is not None:
                variants["runtime_eager"] = eager.infer
            lat = measure_latency(variants, np_inputs, max(10, sizes("latency_calls") // 4), sizes("latency_rounds"),
                                  cuda=False)
            lat["graphs_speedup_p50_host"] = graph_speedup(lat, "host_ms")
            return lat

        _part(rec, "latency_numpy_io", latency_numpy, errors)
    grid_cycle = [(lam_, w) for w in rt.widths for lam_ in (0.0, 0.3, 1.0)]  # BN_c, FiLM and baked paths
    off_cycle = [(lam_, w) for w in rt.widths for lam_ in OFF_GRID[:3]]
    _part(rec, "switch", lambda: measure_switch(rt, grid_cycle, off_cycle, sizes("switch_calls"), cuda), errors)
    if cuda:
        torch.cuda.synchronize()
        rec["memory"]["end"] = _gpu_mem()
        rec["memory"]["note"] = ("max_allocated covers both runtimes (graphs and eager), the TF32-off runtime "
                                 "and the PyTorch model; after_construct_graphs is one runtime with every path "
                                 f"captured at batch {', '.join(map(str, batches))}")
        if eager is not None:
            eager.close()
    rt.close()
    return rec


def _model_cuda_drift(model, images: np.ndarray, modes) -> dict:
    """The PyTorch model itself on CUDA against itself on the CPU (what TF32 etc. cost torch)."""
    import copy

    import torch

    from oat_edge.export.parity import compare, torch_logits

    gpu = copy.deepcopy(model).cuda().eval()
    x = torch.from_numpy(images).cuda()
    worst = 0.0
    for lam, width in modes:
        gpu.set_width(width)
        with torch.no_grad():
            out = gpu(x, float(lam)).float().cpu().numpy()
        worst = max(worst, compare(torch_logits(model, images, lam, width), out)["max_abs_diff"])
    return {"modes": len(modes), "worst_abs_diff": worst}


def section_backend(ctx: Context) -> dict:
    if ctx.bundle is None or ctx.ckpt is None:
        return skipped("no demo bundle (the train section did not produce one)")
    if not ctx.cuda:
        rec = skipped(ctx.cuda_reason)
        dry = backend_checks(ctx.bundle, ctx.ckpt, "cpu", quick=True, sizes=lambda k: SIZES[k][1])
        dry["note"] = "CPU dry run of the same checks (torch backend on the CPU): not a GPU figure"
        bad = list(dry["errors"]) + (["concurrency mixed modes"] if (dry.get("concurrency") or {}).get("ok") is False
                                     else [])
        dry["status"] = "failed" if bad else "ok"
        rec["cpu_dry_run"] = dry
        if bad:  # the CPU half of the checker is broken: that is a failure, not a skip
            rec["status"], rec["reason"] = "failed", f"CPU dry run: {', '.join(bad)}"
        return rec
    rec = backend_checks(ctx.bundle, ctx.ckpt, "cuda", ctx.quick, ctx.size)
    problems = [f"{k} raised" for k in rec["errors"]]
    if (rec.get("concurrency") or {}).get("ok") is False:
        problems.append("set_mode under concurrent inference mixed modes")
    rec["status"] = "failed" if problems else "ok"
    if problems:
        rec["reason"] = "; ".join(problems)
    return rec


# ------------------------------------------------------------------------------------------------
# ddp: a one-process torchrun
# ------------------------------------------------------------------------------------------------
def ddp_worker(out_json: Path, device: str, images: int) -> int:
    """Runs under torchrun: one epoch of OATS through Trainer, whose process group torchrun set
    up; reports what the process group and the wrapping really were."""
    import torch
    import torch.distributed as dist

    from oat_edge.fileio import atomic_write_json
    from oat_edge.training.config import TrainConfig
    from oat_edge.training.trainers import Trainer

    cfg = TrainConfig(dataset="digits", method="oats", epochs=1, batch_size=32, max_train_images=images,
                      device=device, progress=False, threads=1 if device == "cpu" else None,
                      out=str(out_json.with_suffix(".pt")))
    trainer = Trainer(cfg)
    try:
        rec = {"process_group": dist.is_initialized(),
               "backend": dist.get_backend() if dist.is_initialized() else None,
               "world_size": dist.get_world_size() if dist.is_initialized() else 1,
               "ddp_wrapped": isinstance(trainer.step_module, torch.nn.parallel.DistributedDataParallel),
               "device": str(trainer.device),
               "amp": str(trainer.amp_dtype).replace("torch.", "") if trainer.amp_dtype else "off"}
        trainer.fit()
        rec["history"] = trainer.history
        rec["checkpoint_written"] = Path(cfg.out).exists()
    finally:
        trainer.ctx.close()
    atomic_write_json(out_json, rec)
    return 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_torchrun(ctx: Context, device: str, timeout: float) -> dict:
    out_json = ctx.work / f"ddp_{device}.json"
    if out_json.exists():
        out_json.unlink()
    cmd = [ctx.python, "-m", "torch.distributed.run", "--nproc-per-node", "1", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), str(Path(__file__).resolve()), "--ddp-worker", str(out_json),
           "--device", device, "--ddp-images", "512" if device == "cuda" else "128"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = _run(cmd, ctx.logs / f"torchrun_{device}.log", timeout, env=env)
    rec: Dict[str, Any] = {"run": r}
    if r["rc"] != 0 or not out_json.exists():
        why = "timed out" if r["timed_out"] else f"exit {r['rc']}"
        return failed(f"torchrun --nproc-per-node 1 ({device}) {why}", **rec)
    rec.update(json.loads(out_json.read_text()))
    want = "nccl" if device == "cuda" else "gloo"
    ok = rec["process_group"] and rec["backend"] == want and rec["ddp_wrapped"] and rec["checkpoint_written"]
    rec["status"] = "ok" if ok else "failed"
    if not ok:
        rec["reason"] = f"expected a {want} process group, DDP wrapping and a checkpoint"
    return rec


def section_ddp(ctx: Context) -> dict:
    miss = missing_modules("torch", "sklearn")
    if miss:
        return skipped(f"missing Python modules: {', '.join(miss)}")
    ctx.work.mkdir(parents=True, exist_ok=True)
    if ctx.cuda:
        return run_torchrun(ctx, "cuda", timeout=min(180.0, max(30.0, ctx.remaining())))
    rec = skipped(ctx.cuda_reason + ": nccl not exercised")
    rec["cpu_dry_run"] = run_torchrun(ctx, "cpu", timeout=min(180.0, max(30.0, ctx.remaining())))
    rec["cpu_dry_run"]["note"] = "the same one-process torchrun over gloo on the CPU"
    return rec


# ------------------------------------------------------------------------------------------------
# throughput: ResNet-34 32×32
# ------------------------------------------------------------------------------------------------
def section_throughput(ctx: Context) -> dict:
    if not ctx.cuda:
        return skipped(ctx.cuda_reason, note="CPU figures: benchmarks/results/train_throughput.md")
    import train_throughput as tt

    batch, iters, rounds = ctx.size("throughput_batch"), ctx.size("throughput_iters"), ctx.size("throughput_rounds")
    args = tt.parse_args(["--device", "cuda", "--resnet34", "--batch-size", str(batch), "--rounds", str(rounds),
                          "--resnet34-iters", str(iters), "--warmup", "2"])
    import torch

    rec: Dict[str, Any] = {"status": "ok", "batch_size": batch, "iters_per_round": iters, "rounds": rounds,
                           "warmup_steps": 2, "amp": "auto: bf16" if torch.cuda.is_bf16_supported() else "auto: fp16",
                           "channels_last": True, "results": []}
    errors: List[str] = []
    with tempfile.TemporaryDirectory(dir=ctx.work) as tmp:
        for pair in tt.PAIRS:
            box: Dict[str, Any] = {}
            r = _part(box, "r", lambda: tt.measure_pair(pair, "resnet34", args, Path(tmp)), errors)
            if r is None:
                rec.setdefault("failed_pairs", {})[" vs ".join(pair)] = box["r"]
            else:
                rec["results"].append(r)
            torch.cuda.empty_cache()
    rec["ratios"] = {r["pair"]: r["cost_ratio"] for r in rec["results"]}
    if errors:
        rec["status"] = "failed"
        rec["reason"] = "raised: " + ", ".join(rec.get("failed_pairs", {}))
    return rec


# ------------------------------------------------------------------------------------------------
# bench: oat-edge bench --backend torch --device cuda
# ------------------------------------------------------------------------------------------------
def section_bench(ctx: Context) -> dict:
    if not ctx.cuda:
        return skipped(ctx.cuda_reason)
    if ctx.bundle is None or ctx.ckpt is None:
        return skipped("no demo bundle (the train section did not produce one)")
    from oat_edge.export import load_manifest

    prof = load_manifest(ctx.bundle, verify_hashes=False)["batch"]
    batches = [b for b in BATCHES if int(prof["min"]) <= b <= int(prof["max"])]
    exe = shutil.which("oat-edge")
    head = [exe] if exe else [ctx.python, "-m", "oat_edge"]
    report = ctx.out / "bench"
    modes = ["0:0.5", "0:1", "0.5:0.5", "0.5:1", "1:0.5", "1:1"]
    cmd = head + ["bench", str(ctx.bundle), "--backend", "torch", "--device", "cuda", "--checkpoint", str(ctx.ckpt),
                  "--batch", *map(str, batches), "--modes", *modes, "--rounds", "3",
                  "--duration", "0.2" if ctx.quick else "0.3", "--warmup", "0.1", "--report", str(report), "--no-progress"]
    r = _run(cmd, ctx.logs / "bench.log", timeout=min(240.0, max(30.0, ctx.remaining())))
    rec: Dict[str, Any] = {"run": r, "report": "bench/report.md", "json": "bench/bench.json"}
    if r["rc"] != 0 or not (report / "bench.json").exists():
        return failed("timed out" if r["timed_out"] else f"oat-edge bench exit {r['rc']}", **rec)
    res = json.loads((report / "bench.json").read_text())
    rec["status"] = "ok"
    rec["gpu"] = (res.get("device") or {}).get("gpu")
    rec["memory"] = res.get("memory")
    rec["latency_b1"] = [{k: row.get(k) for k in ("lam", "width", "path", "path_id", "p50_ms", "p99_ms")}
                         for row in res.get("latency", []) if row["batch"] == 1]
    rec["acceptance"] = [{k: a.get(k) for k in ("id", "value", "target", "verdict")} for a in _bench_verdicts(res)]
    return rec


def _bench_verdicts(res: dict) -> List[dict]:
    """The runtime benchmark's acceptance verdicts (scripts/bench_acceptance.py: the project's
    targets, which `oat-edge bench` itself does not carry)."""
    from bench_acceptance import acceptance

    return acceptance(res)


# ------------------------------------------------------------------------------------------------
# Summary
# ------------------------------------------------------------------------------------------------
def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _cell(v) -> str:
    """A markdown table cell: formatted, one line, no unescaped column separator."""
    return _fmt(v).replace("|", "\\|").replace("\n", " ")


def acceptance(ctx: Context) -> List[dict]:
    """The acceptance figures: value, goal and verdict (PASS / MISS / FAILED /
    NOT MEASURED with the reason)."""
    R = ctx.results
    rows = []

    def add(id_, what, value, goal, verdict, detail=""):
        rows.append({"id": id_, "criterion": what, "value": value, "goal": goal, "verdict": verdict, "detail": detail})

    def not_measured(sec):
        r = R.get(sec) or {}
        return r.get("reason") or "section did not run"

    env = R.get("env") or {}
    t = env.get("torch") if isinstance(env.get("torch"), dict) else {}
    smi = env.get("nvidia_smi")
    driver = smi[0].get("driver_version") if isinstance(smi, list) and smi else None
    if ctx.cuda:
        add("device", "GPU, driver, torch, CUDA", f"{t.get('device')} · driver {driver} · torch {t.get('version')} · "
            f"CUDA {t.get('cuda')}", None, "RECORDED")
    else:
        add("device", "GPU, driver, torch, CUDA", f"torch {t.get('version')}", None, "NOT MEASURED", ctx.cuda_reason)

    b = R.get("backend") or {}
    if ctx.cuda and str(b.get("device", "")).startswith("cuda"):
        def broken(part):
            return (part or {}).get("reason") or "not recorded"

        p = b.get("parity") or {}
        parts = [p[k] for k in ("grid", "off_grid") if isinstance(p.get(k), dict) and "worst_abs_diff" in p[k]]
        if len(parts) == 2:
            worst = max(x["worst_abs_diff"] for x in parts)
            top1 = min(x["worst_top1"] for x in parts)
            tf32 = (p.get("tf32_off_grid") or {}).get("worst_abs_diff")
            add("parity", "worst abs(Δlogit) on CUDA vs the PyTorch model (every grid mode, baked, off-grid λ)", worst,
                f"≤ {PARITY_TOL:g} (the export gate's bar), top-1 100 %",
                "PASS" if worst <= PARITY_TOL and top1 == 1.0 else "MISS",
                f"top-1 agreement {top1:.1%}; with TF32 off: {_fmt(tf32)}")
        else:
            add("parity", "worst abs(Δlogit) on CUDA vs the PyTorch model", None, f"≤ {PARITY_TOL:g}", "FAILED",
                broken(p.get("grid") if "worst_abs_diff" not in (p.get("grid") or {}) else p.get("off_grid")))
        lat = b.get("latency") or {}
        speed = lat.get("graphs_speedup_p50") or {}
        for bt in BATCHES:
            s_ = speed.get(str(bt))
            what = f"eager ÷ CUDA-graph p50 latency at batch {bt} (CUDA events)"
            if bt == 1:
                verdict = ("PASS" if s_ >= GRAPH_GOAL else "MISS") if s_ is not None else "FAILED"
                add(f"graphs_vs_eager_b{bt}", what, s_, f"≥ {GRAPH_GOAL:g}×", verdict,
                    "" if s_ is not None else broken(lat))
            else:
                add(f"graphs_vs_eager_b{bt}", what, s_, None, "RECORDED" if s_ is not None else "NOT MEASURED",
                    "" if s_ is not None else (broken(lat) if lat.get("status") else "batch outside the bundle"))
        c = b.get("concurrency") or {}
        if "frames" in c:
            add("concurrency", "set_mode under concurrent inference on the GPU: frames in a mixed or wrong mode",
                c["frames_matching_no_mode"] + c["frames_with_wrong_mode"], 0, "PASS" if c["ok"] else "FAILED",
                f"{c['frames']} frames, {c['switches']} switches" + (f"; errors: {c['errors']}" if c.get("errors")
                                                                     else ""))
        else:
            add("concurrency", "set_mode under concurrent inference on the GPU", None, 0, "FAILED", broken(c))
        mem = b.get("memory") or {}
        add("gpu_memory", f"GPU memory of one runtime (every path captured at batch "
            f"{'/'.join(map(str, b.get('batches') or []))}), MB allocated", mem.get("runtime_allocated_mb"), None,
            "RECORDED" if mem.get("runtime_allocated_mb") is not None else "FAILED",
            f"device total in use after construction: {(mem.get('after_construct_graphs') or {}).get('device_used_mb')}"
            " MB" if mem.get("runtime_allocated_mb") is not None else broken(b.get("runtime")))
    else:
        reason = not_measured("backend") if ctx.cuda else ctx.cuda_reason
        for id_, what, goal in (
                ("parity", "worst abs(Δlogit) on CUDA vs the PyTorch model", f"≤ {PARITY_TOL:g}"),
                ("graphs_vs_eager_b1", "eager ÷ CUDA-graph p50 latency at batch 1", f"≥ {GRAPH_GOAL:g}×"),
                ("concurrency", "set_mode under concurrent inference on the GPU", "0 mixed frames"),
                ("gpu_memory", "GPU memory of one runtime", None)):
            add(id_, what, None, goal, "FAILED" if ctx.cuda and b.get("status") == "failed" else "NOT MEASURED",
                reason)

    tp = R.get("throughput") or {}
    for pair, why in (tp.get("failed_pairs") or {}).items():
        add(f"throughput {pair}", f"ResNet-34 32×32 time per image, {pair}", None, f"≤ {THROUGHPUT_GOAL:g}", "FAILED",
            why.get("reason", ""))
    if tp.get("ratios"):
        for pair, ratio in tp["ratios"].items():
            add(f"throughput {pair}", f"ResNet-34 32×32 time per image, {pair}", ratio, f"≤ {THROUGHPUT_GOAL:g}",
                "PASS" if ratio <= THROUGHPUT_GOAL else "MISS")
    elif not tp.get("failed_pairs"):
        add("throughput", "ResNet-34 OAT/PGD-AT and OATS/PGD-ATS on GPU", None, f"≤ {THROUGHPUT_GOAL:g}",
            "NOT MEASURED" if tp.get("status") != "failed" else "FAILED", not_measured("throughput"))

    tr = R.get("train") or {}
    if ctx.cuda and isinstance(tr.get("cuda"), dict) and "history" in tr["cuda"]:
        s = tr.get("sanity") or {}
        add("amp_training", f"OATS digits on CUDA ({tr['cuda']['amp']}, channels_last={tr['cuda']['channels_last']}) "
            "agrees with the CPU run", s.get("ok"), "loss ±25 %, SA/RA ±10 pts", "PASS" if s.get("ok") else "MISS")
    else:
        add("amp_training", "OATS digits on CUDA with AMP + channels_last", None, None,
            "NOT MEASURED" if tr.get("status") != "failed" else "FAILED",
            ctx.cuda_reason if not ctx.cuda else not_measured("train"))

    d = R.get("ddp") or {}
    if ctx.cuda:
        verdict = {"ok": "PASS", "failed": "FAILED"}.get(d.get("status"), "NOT MEASURED")
        add("nccl_ddp", "one-process torchrun, DDP over nccl", d.get("backend"), "nccl", verdict,
            not_measured("ddp") if verdict == "NOT MEASURED" else d.get("reason", ""))
    else:
        dry = d.get("cpu_dry_run") or {}
        add("nccl_ddp", "one-process torchrun, DDP over nccl", None, "nccl", "NOT MEASURED",
            f"{ctx.cuda_reason}; gloo dry run: {dry.get('status', 'not run')}")

    be = R.get("bench") or {}
    if be.get("status") == "ok":
        add("bench_cuda", "oat-edge bench --backend torch --device cuda, GPU memory (MB)",
            (be.get("memory") or {}).get("gpu_max_allocated_mb"), None, "RECORDED")
    else:
        add("bench_cuda", "oat-edge bench --backend torch --device cuda", None, None,
            "FAILED" if be.get("status") == "failed" else "NOT MEASURED", not_measured("bench"))
    for sec in ("gpu_tests", "fast_tests"):
        r = R.get(sec) or {}
        c = r.get("counts") or {}
        value = (f"{c.get('passed')} passed, {c.get('failures', 0) + c.get('errors', 0)} failing, "
                 f"{c.get('skipped')} skipped") if c else None
        verdict = {"ok": "PASS", "failed": "FAILED"}.get(r.get("status"), "NOT MEASURED")
        if c and c.get("tests") and c.get("skipped") == c.get("tests"):
            verdict = "NOT MEASURED"  # every test skipped (no GPU): nothing passed
        add(sec, "pytest -m gpu" if sec == "gpu_tests" else 'pytest -m "not slow and not gpu"', value, "0 failing",
            verdict, r.get("reason") or r.get("note") or "")
    return rows


def markdown(ctx: Context, summary: dict) -> str:
    R = ctx.results
    env = R.get("env") or {}
    t = env.get("torch") if isinstance(env.get("torch"), dict) else {}
    lines = ["# GPU verification", ""]
    lines.append(f"Created {summary['created']} · {summary['command']} · {summary['wall_s']:.0f} s · "
                 f"oat-edge {env.get('oat_edge')} @ {str((env.get('git') or {}).get('commit'))[:10]}")
    lines.append("")
    if ctx.cuda:
        smi = env.get("nvidia_smi")
        row = smi[0] if isinstance(smi, list) and smi else {}
        lines.append(f"**Device:** {t.get('device')} (sm {t.get('compute_capability')}, {t.get('memory_gib')} GiB) · "
                     f"driver {row.get('driver_version')} · torch {t.get('version')} · CUDA {t.get('cuda')} · "
                     f"cuDNN {t.get('cudnn')} · NCCL {t.get('nccl')}")
    else:
        lines.append(f"**No CUDA device on this machine** ({ctx.cuda_why}). Every CUDA measurement below is "
                     "`skipped: no CUDA device`; this run reports no GPU figure. CPU dry runs exercise the same code.")
    lines += ["", "## Acceptance", "", "| id | criterion | value | goal | verdict | detail |", "|---|---|---|---|---|---|"]
    for a in summary["acceptance"]:
        lines.append("| " + " | ".join(_cell(a[k]) for k in ("id", "criterion", "value", "goal", "verdict", "detail"))
                     + " |")
    lines += ["", "## Sections", "", "| section | status | seconds | reason / note | file |", "|---|---|---:|---|---|"]
    for s in summary["sections"]:
        lines.append("| " + " | ".join(_cell(s.get(k)) if s.get(k) is not None else ""
                                       for k in ("section", "status", "seconds", "reason", "file")) + " |")
    tr = R.get("train") or {}
    runs = [(k, tr[k]) for k in ("cuda", "cpu") if isinstance(tr.get(k), dict) and "history" in tr[k]]
    if runs:
        lines += ["", "## Training: OATS on digits", "", "| run | amp | channels_last | epoch | loss | train clean acc | "
                  "train adv acc | img/s |", "|---|---|---|---:|---:|---:|---:|---:|"]
        for name, run in runs:
            for h in run["history"]:
                lines.append(f"| {name} ({run['device']}) | {run['amp']} | {run['channels_last']} | {h['epoch']} | "
                             f"{h['loss']:.4f} | {_fmt(h['clean_acc'])} | {_fmt(h['adv_acc'])} | {h['images_per_s']} |")
        lines += ["", "| run | SA λ=0 w=1 | RA (training attack) λ=1 w=1 |", "|---|---:|---:|"]
        for name, run in runs:
            lines.append(f"| {name} | {_fmt(_eval_at(run, 0.0, 1.0, 'sa'))} | {_fmt(_eval_at(run, 1.0, 1.0, 'ra'))} |")
        bun = tr.get("bundle") or {}
        if bun.get("paths"):
            lines += ["", f"Demo bundle: {bun['paths']} BN paths + {bun['baked_paths']} baked (widths {bun['widths']}, "
                      f"baked λ {bun['baked']}), "
                      f"exported in {bun['seconds']} s from the {bun['from']} checkpoint; ops {', '.join(bun['ops'])}."]
    b = R.get("backend") or {}
    src, label = (b, "") if "device" in b else (b.get("cpu_dry_run") or {}, " — CPU dry run, not a GPU figure")
    if "device" in src:
        lines += ["", f"## torch backend ({src['device']}){label}"] + ([""] if src.get("errors") else [])
        for k in src.get("errors") or []:
            lines.append(f"- **{k} raised:** {((src.get(k) or (src.get('parity') or {}).get(k)) or {}).get('reason')}")
        lines += ["", "| parity check | modes | worst abs Δlogit | top-1 |", "|---|---:|---:|---:|"]
        for k, v in (src.get("parity") or {}).items():
            if isinstance(v, dict) and "worst_abs_diff" in v:
                lines.append(f"| {k} | {v['modes']} | {v['worst_abs_diff']:.3g} | {_fmt(v.get('worst_top1'))} |")
        key = "cuda_events_ms" if src["device"].startswith("cuda") else "host_ms"
        lat = src.get("latency") or {}
        if "rows" in lat:
            lines += ["", f"Latency, mode λ={lat['mode']['lam']:g} width={lat['mode']['width']:g} "
                      f"({lat['inputs']}; {key}):", "", "| variant | batch | p50 ms | p99 ms |", "|---|---:|---:|---:|"]
            for r in sorted(lat["rows"], key=lambda r: (r["batch"], r["variant"])):
                lines.append(f"| {r['variant']} | {r['batch']} | {r[key]['p50']:.4f} | {r[key]['p99']:.4f} |")
        sw = src.get("switch") or {}
        if "timer" in sw:
            lines += ["", f"Switch: set_mode p50/p99 {sw['set_mode_grid_or_baked_us']['p50']:.2f}/"
                      f"{sw['set_mode_grid_or_baked_us']['p99']:.2f} µs (grid/baked), "
                      f"{sw['set_mode_off_grid_us']['p50']:.2f}/{sw['set_mode_off_grid_us']['p99']:.2f} µs (off-grid); "
                      f"first inference after a switch p50 {sw['first_infer_after_switch_ms']['p50']:.4f} ms vs steady "
                      f"{sw['steady_infer_ms']['p50']:.4f} ms ({sw['timer']})."]
        c = src.get("concurrency") or {}
        if "frames" in c:
            lines += ["", f"Concurrency: {c['frames']} frames on {c['threads']} threads, {c['switches']} switches, "
                      f"{c['modes_seen']}/{c['modes']} modes seen, {c['frames_matching_no_mode']} frames matching no "
                      f"mode, {c['frames_with_wrong_mode']} with the wrong mode ({c['inputs']})."]
        if src.get("memory"):
            m = src["memory"]
            lines += ["", "GPU memory (MB): " + "; ".join(f"{k}: {v.get('allocated_mb')} allocated, "
                                                          f"{v.get('max_allocated_mb')} peak"
                                                          for k, v in m.items() if isinstance(v, dict))]
    tp = R.get("throughput") or {}
    if tp.get("results"):
        lines += ["", f"## ResNet-34 32×32 training throughput (batch {tp['batch_size']}, {tp['amp']})", "",
                  "| pair | img/s first | img/s second | cost ratio |", "|---|---:|---:|---:|"]
        for r in tp["results"]:
            a, bb = r["pair"].split(" vs ")
            lines.append(f"| {r['pair']} | {r['images_per_s'][a]['median']:.1f} | {r['images_per_s'][bb]['median']:.1f} "
                         f"| {r['cost_ratio']:.3f} |")
    d = R.get("ddp") or {}
    dd, dl = (d, "") if "backend" in d else (d.get("cpu_dry_run") or {}, " (CPU dry run over gloo)")
    if "backend" in dd:
        lines += ["", f"## torchrun --nproc-per-node 1{dl}", "",
                  f"process group {dd['process_group']}, backend {dd['backend']}, world size {dd['world_size']}, "
                  f"DDP-wrapped {dd['ddp_wrapped']}, device {dd['device']}, amp {dd['amp']}, checkpoint written "
                  f"{dd['checkpoint_written']}."]
    lines += ["", "Files: `summary.json` (this, as data), one JSON per section, `bench/` (the bench report), "
              "`logs/` (pytest logs and JUnit XML, torchrun and bench logs, nvidia-smi).", ""]
    return "\n".join(lines)


def write_summary(ctx: Context, started: float, command: str) -> None:
    from oat_edge.fileio import atomic_write_text

    sections = []
    for name in SECTIONS:
        r = ctx.results.get(name)
        if r is None:
            continue
        sections.append({"section": name, "status": r.get("status"), "seconds": r.get("seconds"),
                         "reason": r.get("reason") or r.get("note"), "file": r.get("file")})
    summary = {"schema": "oat-edge/gpu-check", "schema_version": 1,
               "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": command,
               "wall_s": round(time.time() - started, 1), "cuda": ctx.cuda,
               "cuda_skipped": None if ctx.cuda else ctx.cuda_reason, "sections": sections,
               "acceptance": acceptance(ctx)}
    ctx.write("summary.json", summary)
    atomic_write_text(ctx.out / "summary.md", markdown(ctx, plain(summary, nan_as_none=True)))


# Sections that a GPU run skips when less than this many seconds of the budget are left (the
# files written so far are kept; the fast suite takes whatever remains, see section_fast_tests).
MIN_SECONDS = {"backend": 45, "ddp": 25, "throughput": 45, "bench": 40}
FILES = {"env": "env.json", "gpu_tests": "tests.json", "fast_tests": "tests.json", "train": "train.json",
         "backend": "backend.json", "ddp": "ddp.json", "throughput": "throughput.json", "bench": "bench_run.json"}
RUNNERS = {"env": section_env, "gpu_tests": section_gpu_tests, "train": section_train, "backend": section_backend,
           "ddp": section_ddp, "throughput": section_throughput, "bench": section_bench,
           "fast_tests": section_fast_tests}


def run_sections(ctx: Context, names: Sequence[str], started: float, command: str) -> int:
    """Run the sections in order; one that raises is recorded as failed and the rest still run."""
    import traceback

    for name in SECTIONS:
        if name not in names:
            continue
        t0 = time.monotonic()
        print(f"[gpu_check] {name} …", flush=True)
        need = MIN_SECONDS.get(name, 0) if ctx.cuda else 0
        try:
            if ctx.remaining() < need:
                rec = skipped(f"time budget: {ctx.remaining():.0f} s left, this needs about {need} s")
            else:
                rec = RUNNERS[name](ctx)
        except Exception as e:  # noqa: BLE001 - a broken section must not hide the others
            tb = traceback.format_exc()
            (ctx.logs / f"{name}.traceback.txt").write_text(tb)
            rec = failed(f"{e.__class__.__name__}: {str(e)[:300]}", traceback=f"logs/{name}.traceback.txt")
        rec["seconds"] = round(time.monotonic() - t0, 2)
        rec["file"] = FILES[name]
        ctx.results[name] = rec
        if name in ("gpu_tests", "fast_tests"):
            ctx.write("tests.json", {k: ctx.results[k] for k in ("gpu_tests", "fast_tests") if k in ctx.results})
        else:
            ctx.write(FILES[name], rec)
        try:
            write_summary(ctx, started, command)
        except Exception:  # noqa: BLE001 - the section files are written; keep measuring
            (ctx.logs / "summary.traceback.txt").write_text(traceback.format_exc())
            print("[gpu_check] summary failed: logs/summary.traceback.txt", flush=True)
        print(f"[gpu_check] {name}: {rec['status']}" + (f" ({rec['reason']})" if rec.get("reason") else "")
              + f" in {rec['seconds']:.1f} s", flush=True)
    bad = [n for n, r in ctx.results.items() if r.get("status") == "failed"]
    print(f"[gpu_check] wrote {ctx.out}/summary.md" + (f"; failed: {', '.join(bad)}" if bad else ""), flush=True)
    return 1 if bad else 0


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="gpu_check.py", description=__doc__.split("\n\n")[0],
        epilog="Sections: " + ", ".join(SECTIONS) + ". Results: OUT_DIR/summary.md and summary.json, one JSON per "
        "section, OUT_DIR/bench/ and OUT_DIR/logs/. Exit 1 when a section failed, 0 otherwise (skips are not "
        "failures). docs/gpu.md explains the run.")
    p.add_argument("out_dir", type=Path, nargs="?", help="folder for the results (created)")
    p.add_argument("--quick", action="store_true", help="smaller sizes (1 epoch on 256 images, fewer calls): a smoke run")
    p.add_argument("--suite", choices=("fast", "gpu", "none"), default="fast",
                   help="tests to run: fast = pytest -m gpu and the fast suite (default); gpu = only -m gpu; none")
    p.add_argument("--only", nargs="+", choices=SECTIONS, metavar="SECTION", help="run only these sections")
    p.add_argument("--skip", nargs="+", choices=SECTIONS, default=[], metavar="SECTION", help="skip these sections")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="auto: CUDA when torch sees a GPU (default); cpu: skip the CUDA parts; cuda: fail without one")
    p.add_argument("--budget-s", type=float, default=450.0,
                   help="seconds this script may take (default 450); the fast suite gets what is left")
    p.add_argument("--work-dir", type=Path, default=None,
                   help="where checkpoints and the bundle go (default: a temporary folder, removed at the end)")
    p.add_argument("--bundle", type=Path, default=None,
                   help="use this bundle for the backend and bench sections instead of exporting the demo bundle")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="the checkpoint --bundle was exported from (required with it)")
    p.add_argument("--ddp-worker", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--ddp-images", type=int, default=128, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.ddp_worker is None and args.out_dir is None:
        p.error("OUT_DIR is required")
    if args.budget_s <= 0:
        p.error("--budget-s must be > 0")
    if args.out_dir is not None and args.out_dir.exists() and not args.out_dir.is_dir():
        p.error(f"OUT_DIR {args.out_dir} exists and is not a folder")
    if (args.bundle is None) != (args.checkpoint is None):
        p.error("--bundle and --checkpoint go together (the checkpoint is the parity reference)")
    if args.bundle is not None and not (args.bundle / "manifest.json").is_file():
        p.error(f"--bundle {args.bundle}: no manifest.json there (not a bundle written by `oat-edge export`)")
    if args.checkpoint is not None and not args.checkpoint.is_file():
        p.error(f"--checkpoint {args.checkpoint}: no such file")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.ddp_worker is not None:
        return ddp_worker(args.ddp_worker, "cpu" if args.device == "cpu" else "cuda", args.ddp_images)
    started = time.time()
    command = "gpu_check.py " + " ".join(sys.argv[1:] if argv is None else list(map(str, argv)))
    tmp = None
    if args.work_dir is None:
        tmp = tempfile.mkdtemp(prefix="oat-edge-gpu-check-")
        args.work_dir = Path(tmp)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    try:
        ctx = Context(args)
        names = [s for s in (args.only or SECTIONS) if s not in args.skip]
        if args.suite == "none":
            names = [s for s in names if s not in ("gpu_tests", "fast_tests")]
        return run_sections(ctx, names, started, command)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
