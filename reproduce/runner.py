"""Run a suite: train and evaluate every run, resumably, in worker processes.

Layout of the output folder::

    DIR/runs/<run>/spec.json     what the run is (written first)
    DIR/runs/<run>/ckpt.pt       its checkpoint, written after every epoch by the Trainer
    DIR/runs/<run>/result.json   its evaluation records, written once it is finished
    DIR/runs/<run>/log.txt       the trainer's per-epoch lines
    DIR/sessions.json            wall time of every invocation
    DIR/results.json             everything above, gathered, plus the comparisons (report.py)

A run whose ``result.json`` carries the current spec hash is finished and skipped. A run with a
``ckpt.pt`` of the same training spec continues from it (``Trainer(..., resume=ckpt)``, exact on
the CPU; a complete checkpoint is only evaluated again); a checkpoint of another training spec
is discarded. So killing ``oat-edge reproduce`` and starting it
again loses at most the epoch in progress.

Workers are spawned processes with one torch thread each (two busy threads per core slowed
small-model training many times over in our measurements); they report epochs and evaluated
modes through a queue, from which the parent draws one bar per active run and an overall bar
whose ETA weighs each run by its estimated cost.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue as queue_mod
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from oat_edge.errors import ConfigError, OatEdgeError
from oat_edge.fileio import atomic_write_json
from reproduce.suite import Recipe, Run, Suite, estimated_cost, eval_modes, train_config

RESULTS_SCHEMA = "oat-edge/reproduction"
RESULTS_VERSION = 1

_QUEUE = None  # the worker's end of the progress queue


def run_dir(out: Path, run: Run) -> Path:
    return Path(out) / "runs" / run.name


def finished_result(out: Path, run: Run, recipe: Recipe) -> Optional[dict]:
    """The stored result of a finished run with the current spec, else None."""
    path = run_dir(out, run) / "result.json"
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return result if result.get("spec_hash") == run.spec_hash(recipe) else None


# --- worker side ---------------------------------------------------------------------------------


def _init_worker(q) -> None:
    global _QUEUE
    _QUEUE = q
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)


def _emit(name: str, done: float, total: float, note: str = "") -> None:
    if _QUEUE is not None:
        _QUEUE.put((name, done, total, note))


def execute_run(run: Run, recipe: Recipe, out: str, report: Optional[Callable] = None) -> dict:
    """Train (or resume) and evaluate one run; returns and stores its result. ``report(done,
    total, note)`` is called after every epoch and evaluated mode (default: the worker queue)."""
    import torch

    torch.set_num_threads(1)
    report = report or (lambda done, total, note="": _emit(run.name, done, total, note))
    folder = run_dir(Path(out), run)
    folder.mkdir(parents=True, exist_ok=True)
    spec_hash, train_hash = run.spec_hash(recipe), run.train_hash(recipe)
    spec_path = folder / "spec.json"
    ckpt = folder / "ckpt.pt"
    (folder / "result.json").unlink(missing_ok=True)
    old = json.loads(spec_path.read_text()).get("train_hash") if spec_path.is_file() else None
    if old != train_hash:  # another recipe's checkpoint: train this run from scratch
        ckpt.unlink(missing_ok=True)
    atomic_write_json(spec_path, {"spec_hash": spec_hash, "train_hash": train_hash, **run.spec(recipe)})
    with open(folder / "log.txt", "a") as log, contextlib.redirect_stderr(log):
        if run.kind == "timing":
            result = _timing(run, recipe, folder, report)
        elif run.kind == "saliency":
            result = _saliency(run, recipe, Path(out), report)
        else:
            result = _train_and_eval(run, recipe, ckpt, report)
    result.update(name=run.name, group=run.group, seed=run.seed, kind=run.kind, spec_hash=spec_hash)
    atomic_write_json(folder / "result.json", result)
    return result


def _train_and_eval(run: Run, recipe: Recipe, ckpt: Path, report: Callable) -> dict:
    from oat_edge.checkpoint import load_checkpoint
    from oat_edge.training.trainers import Trainer

    total = recipe.epochs + eval_modes(run)
    cfg = train_config(run, recipe, str(ckpt))
    trainer = Trainer(cfg, resume=str(ckpt) if ckpt.is_file() else None)
    resumed_at = trainer.start_epoch
    try:
        report(trainer.start_epoch, total, "train")
        for epoch in range(trainer.start_epoch, recipe.epochs):
            trainer.fit(stop_after=epoch + 1)  # one epoch, then its checkpoint
            trainer.start_epoch = epoch + 1
            report(epoch + 1, total, "train")
        history = list(trainer.history)
    finally:
        trainer.ctx.close()
    payload = load_checkpoint(ckpt)
    records, eval_seconds = _evaluate(run, recipe, payload, report, recipe.epochs, total)
    return {
        "records": records,
        "train_seconds": round(sum(float(h.get("seconds", 0.0)) for h in history), 2),
        "eval_seconds": round(eval_seconds, 2),
        "epochs": recipe.epochs,
        "resumed_at_epoch": resumed_at,
        "final_epoch": {k: history[-1].get(k) for k in ("loss", "clean_acc", "adv_acc")} if history else {},
    }


def _model_with_encoding(payload: dict, encoding: Optional[str]):
    """The checkpoint's network, optionally under another λ interpolation (same weights: RO
    encodings differ only between training λ values)."""
    from oat_edge.checkpoint import build_model

    if encoding is None:
        return build_model(payload)
    return build_model({**payload, "arch_kwargs": {**payload["arch_kwargs"], "lambda_encoding": encoding}})


def _evaluate(run: Run, recipe: Recipe, payload: dict, report: Callable, done: int, total: int):
    from oat_edge.training.datasets import load_dataset
    from oat_edge.training.evaluate import evaluate_model, plain_record

    test = load_dataset("digits", "test")
    start = time.perf_counter()
    records = []
    jobs = [(None, lam) for lam in run.eval_lambdas]
    jobs += [(enc, lam) for enc, lams in run.eval_encodings.items() for lam in lams]
    models = {}
    for enc, lam in jobs:
        if enc not in models:
            models[enc] = _model_with_encoding(payload, enc)
        model = models[enc]
        for width in (run.widths or [1.0]):
            rec = evaluate_model(model, test, lambdas=[lam], widths=[width], max_images=recipe.eval_images,
                                 progress=False, seed=run.seed)[0]
            rec = plain_record(rec)
            rec["encoding"] = enc or payload["arch_kwargs"].get("lambda_encoding", "ro")
            rec["primary"] = enc is None  # the run's own encoding
            records.append(rec)
            done += 1
            report(done, total, "eval")
    return records, time.perf_counter() - start


def _timing(run: Run, recipe: Recipe, folder: Path, report: Callable) -> dict:
    """Seconds per training epoch of OAT, PGD-AT, OATS and PGD-ATS, epochs taken in turn
    (OAT, PGD-AT, OATS, PGD-ATS, OAT, ...) so that load on the machine hits all alike."""
    from oat_edge.training.throughput import interleaved_step_seconds
    from oat_edge.training.trainers import Trainer

    methods = {
        "oat": Run(name="t-oat", group="t", seed=0, method="oat", lambdas=run.lambdas),
        "pgd-at": Run(name="t-pgdat", group="t", seed=0, method="pgd-at", lambdas=[1.0]),
        "oats": Run(name="t-oats", group="t", seed=0, method="oats", lambdas=run.lambdas, widths=run.widths),
        "pgd-ats": Run(name="t-pgdats", group="t", seed=0, method="pgd-ats", lambdas=[1.0], widths=run.widths),
    }
    trainers = {m: Trainer(train_config(r, recipe, str(folder / f"unused-{m}.pt"))) for m, r in methods.items()}
    steps = next(iter(trainers.values())).steps_per_epoch
    total = recipe.timing_epochs * len(methods)
    try:
        raw = interleaved_step_seconds(trainers, recipe.timing_epochs, steps,
                                       on_round=lambda r, _s: report((r + 1) * len(methods), total, "timing"))
    finally:
        for tr in trainers.values():
            tr.ctx.close()
    seconds = {m: [round(x, 3) for x in v] for m, v in raw.items()}
    return {"seconds_per_epoch": seconds, "widths": list(run.widths or []), "lambdas": list(run.lambdas),
            "steps_per_epoch": steps}


def _saliency(run: Run, recipe: Recipe, out: Path, report: Callable) -> dict:
    """Input-gradient maps and their alignment with the image, OAT against dedicated PGD-AT, per λ."""
    import importlib

    from oat_edge.checkpoint import load_model
    from oat_edge.training.datasets import load_dataset

    try:
        sal = importlib.import_module("oat_edge.training.saliency")
        saliency_maps, gradient_alignment = sal.saliency_maps, sal.gradient_alignment
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"the saliency figures need oat_edge.training.saliency "
                          f"(saliency_maps, gradient_alignment): {e}") from None
    test = load_dataset("digits", "test")
    x, y = test.tensors[0][: recipe.saliency_images], test.tensors[1][: recipe.saliency_images]
    shown = 4  # images whose maps go into results.json (the figure)
    oat, _ = load_model(out / "runs" / "oat-s1_s0" / "ckpt.pt")
    out_rows = []
    for i, lam in enumerate(run.lambdas):
        from reproduce.suite import lam_tag

        pgd, _ = load_model(out / "runs" / f"pgdat-{lam_tag(lam)}_s0" / "ckpt.pt")
        row = {"lam": float(lam)}
        for tag, model in (("oat", oat), ("pgdat", pgd)):
            maps = saliency_maps(model, x[:shown], y[:shown], lam).detach().cpu()[:, 0].double()
            row[f"{tag}_alignment"] = round(float(gradient_alignment(model, x, y, lam)), 6)
            # Each map scaled to max |value| = 1 (gradients of a confident model are tiny) and
            # its scale kept beside it.
            scales = [float(m.abs().max()) for m in maps]
            row[f"{tag}_scale"] = [float(f"{v:.6g}") for v in scales]
            row[f"{tag}_maps"] = [[[round(float(v) / sc, 4) if sc > 0 else 0.0 for v in line] for line in m]
                                  for m, sc in zip(maps, scales)]
        out_rows.append(row)
        report(i + 1, len(run.lambdas), "saliency")
    images = [[[round(float(v), 4) for v in line] for line in img[0]] for img in x[:shown]]
    return {"per_lambda": out_rows, "images": images, "labels": [int(v) for v in y[:shown]],
            "n_images": int(x.shape[0])}


# --- parent side ---------------------------------------------------------------------------------


class _Bars:
    """One bar per active run and an overall bar (rich), or nothing when disabled."""

    def __init__(self, enabled: bool, total_cost: float, done_cost: float):
        self.enabled = enabled
        self.bars: Dict[str, Any] = {}
        self.costs: Dict[str, float] = {}
        self.progress = None
        if enabled:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[note]}"), TimeElapsedColumn(), TimeRemainingColumn())
            self.overall = self.progress.add_task("[bold]suite (ETA)", total=round(total_cost), completed=round(done_cost),
                                                  note="cost units")
        self.overall_done = done_cost

    def __enter__(self):
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.stop()
        return False

    def start(self, name: str, cost: float, total: float) -> None:
        self.costs[name] = cost
        if self.progress is not None:
            self.bars[name] = (self.progress.add_task(f"  {name}", total=total, note=""), 0.0, total)

    def update(self, name: str, done: float, total: float, note: str) -> None:
        if name not in self.bars:
            return
        task, before, _ = self.bars[name]
        self.bars[name] = (task, done, total)
        self.progress.update(task, completed=done, total=total, note=note)
        self.overall_done += self.costs[name] * (done - before) / max(total, 1)
        self.progress.update(self.overall, completed=round(self.overall_done))

    def finish(self, name: str) -> None:
        if name in self.bars:
            task, done, total = self.bars.pop(name)
            self.overall_done += self.costs[name] * (total - done) / max(total, 1)
            self.progress.remove_task(task)
            self.progress.update(self.overall, completed=round(self.overall_done))
        elif not self.enabled:
            pass


def execute_suite(suite: Suite, out, jobs: int = 2, progress: bool = True, log: Callable = print) -> Path:
    """Run every unfinished run of ``suite`` into ``out`` and write ``out/results.json`` and the
    report; returns the results path."""
    out = Path(out)
    if jobs < 1:
        raise ConfigError(f"--jobs must be ≥ 1, got {jobs}")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder (it will hold checkpoints, results and the report)")
    out.mkdir(parents=True, exist_ok=True)
    recipe = suite.recipe
    started = time.time()
    t0 = time.perf_counter()
    results: Dict[str, dict] = {}
    pending: List[Run] = []
    for run in suite.runs:
        done = finished_result(out, run, recipe)
        if done is not None:
            results[run.name] = done
        else:
            pending.append(run)
    costs = {r.name: estimated_cost(r, recipe) for r in suite.runs}
    log(f"reproduce: suite {suite.name}, {len(suite.runs)} runs, {len(results)} already finished, "
        f"{len(pending)} to do, {jobs} worker(s)")
    # Largest first (fills the workers evenly); dependants wait for what they read.
    pending.sort(key=lambda r: -costs[r.name])
    total_cost = sum(costs.values())
    done_cost = sum(costs[n] for n in results)
    with _Bars(progress, total_cost, done_cost) as bars:
        if jobs == 1:
            _run_inline(pending, recipe, out, results, bars)
        else:
            _run_pool(pending, recipe, out, results, bars, jobs)
    _append_session(out, started, time.perf_counter() - t0, len(pending))
    from reproduce.report import write_report

    path = gather(suite, out, results)
    write_report(path, out)
    return path


def _ready(run: Run, results: Dict[str, dict]) -> bool:
    return all(name in results for name in run.after)


def _run_inline(pending, recipe, out, results, bars) -> None:
    for run in sorted(pending, key=lambda r: bool(r.after)):
        total = _bar_total(run, recipe)
        bars.start(run.name, estimated_cost(run, recipe), total)
        results[run.name] = execute_run(run, recipe, str(out),
                                        report=lambda d, t, n="", name=run.name: bars.update(name, d, t, n))
        bars.finish(run.name)


def _bar_total(run: Run, recipe: Recipe) -> int:
    if run.kind == "timing":
        return recipe.timing_epochs * 4
    if run.kind == "saliency":
        return len(run.lambdas)
    return recipe.epochs + eval_modes(run)


def _run_pool(pending, recipe, out, results, bars, jobs) -> None:
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    ctx = mp.get_context("spawn")  # no forked torch thread pools
    q = ctx.Queue()
    waiting = list(pending)
    running = {}
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_init_worker, initargs=(q,)) as pool:
        try:
            while waiting or running:
                for run in [r for r in waiting if _ready(r, results)][: max(0, jobs - len(running))]:
                    waiting.remove(run)
                    bars.start(run.name, estimated_cost(run, recipe), _bar_total(run, recipe))
                    running[pool.submit(execute_run, run, recipe, str(out))] = run
                if not running:
                    missing = sorted({n for r in waiting for n in r.after if n not in results})
                    raise ConfigError(f"runs {', '.join(r.name for r in waiting)} wait for {', '.join(missing)}, "
                                      "which are not in the suite")
                finished, _ = wait(list(running), timeout=0.5, return_when=FIRST_COMPLETED)
                _drain(q, bars)
                for fut in finished:
                    run = running.pop(fut)
                    try:
                        results[run.name] = fut.result()
                    except OatEdgeError as e:  # stops the suite; finished runs stay finished
                        raise OatEdgeError(f"run {run.name}: {e}") from e
                    bars.finish(run.name)
        except BrokenProcessPool:
            raise OatEdgeError("a worker process died (out of memory?); finished runs are kept: run the same "
                               "command again to continue") from None
        except BaseException:
            for fut in running:
                fut.cancel()
            raise
        finally:
            _drain(q, bars)


def _drain(q, bars) -> None:
    while True:
        try:
            name, done, total, note = q.get_nowait()
        except queue_mod.Empty:
            return
        bars.update(name, done, total, note)


def _append_session(out: Path, started: float, seconds: float, runs_done: int) -> None:
    path = out / "sessions.json"
    sessions = []
    if path.is_file():
        try:
            sessions = list(json.loads(path.read_text()))
        except (OSError, ValueError):
            sessions = []
    sessions.append({"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
                     "wall_seconds": round(seconds, 1), "runs_done": runs_done, "cpu_count": os.cpu_count()})
    atomic_write_json(path, sessions)


def gather(suite: Suite, out: Path, results: Dict[str, dict]) -> Path:
    """Write ``out/results.json``: the suite, every run's result, the sessions and the comparisons."""
    from reproduce.report import summarize

    missing = [r.name for r in suite.runs if r.name not in results]
    if missing:
        raise OatEdgeError(f"runs not finished: {', '.join(missing)}")
    sessions = json.loads((out / "sessions.json").read_text()) if (out / "sessions.json").is_file() else []
    doc = {
        "schema": RESULTS_SCHEMA,
        "schema_version": RESULTS_VERSION,
        "suite": suite.describe(),
        "sessions": sessions,
        "runs": {r.name: {k: v for k, v in results[r.name].items() if k != "spec_hash"} for r in suite.runs},
    }
    doc["summary"] = summarize(doc)
    path = out / "results.json"
    atomic_write_json(path, doc)
    return path
