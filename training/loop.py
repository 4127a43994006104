"""The epochs of a run: batches → steps, the per-epoch statistics, evaluation, checkpoints and
what the console shows.

Determinism: the shuffle and augmentation of epoch e come from ``epoch_batches(seed, e)`` and
every step re-seeds its own randomness (training/step.py), so an epoch is the same whatever ran
before it. Training runs inside ``torch.random.fork_rng``, so the caller's RNG is left as it was.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

from oat_edge.errors import TrainingError
from oat_edge.progress import progress_bar
from oat_edge.training.distributed import all_reduce_sum, average_buffers
from oat_edge.training.step import STREAM_EVAL, derive_seed


def fit(trainer, stop_after: Optional[int] = None) -> Path:
    """Train from the trainer's start epoch to ``cfg.epochs`` (or stop after epoch
    ``stop_after``, as if the process had been killed there), checkpointing every epoch."""
    cfg, ctx, state = trainer.cfg, trainer.ctx, trainer.state
    devices = [trainer.device.index or 0] if trainer.device.type == "cuda" else []
    end = cfg.epochs if stop_after is None else min(cfg.epochs, stop_after)
    with torch.random.fork_rng(devices=devices):
        if state.start_epoch >= cfg.epochs and ctx.is_main:
            _console().print(f"[bold]{cfg.out}[/]: already trained for {cfg.epochs} epochs; nothing to do")
            if not state.writes_over_resumed():
                state.save(trainer, state.start_epoch)
        for epoch in range(state.start_epoch, end):
            record = train_epoch(trainer, epoch)
            average_buffers(trainer.model, ctx)
            if cfg.eval_every and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
                state.last_eval = evaluate(trainer, epoch)
                record["eval"] = state.last_eval
            state.history.append(record)
            state.save(trainer, epoch + 1)
            ctx.barrier()
    return Path(cfg.out)


def train_epoch(trainer, epoch: int) -> Dict[str, Any]:
    """One epoch of steps; returns its record (loss, train accuracies, lr, time, throughput)."""
    cfg, ctx, optimizer = trainer.cfg, trainer.ctx, trainer.optimizer
    totals = np.zeros(6)  # loss·n, n, clean correct, clean seen, adv correct, adv seen
    start = time.perf_counter()
    with _EpochProgress(ctx.is_main and cfg.progress, epoch, cfg.epochs, trainer.steps_per_epoch) as bar:
        for step, (x, y) in enumerate(trainer.batches(epoch)):
            lr = optimizer.param_groups[0]["lr"]
            s = trainer.step(epoch, step, x, y)
            _check_finite_loss(trainer, s.loss, epoch, step, lr)
            totals += [s.loss * x.shape[0], x.shape[0], s.clean_correct, s.clean_seen, s.adv_correct, s.adv_seen]
            bar.update(loss=totals[0] / totals[1], clean=_ratio(totals[2], totals[3]),
                       adv=_ratio(totals[4], totals[5]), lr=lr, ips=totals[1] / (time.perf_counter() - start))
    totals = np.asarray(all_reduce_sum(totals.tolist(), ctx, trainer.device))  # nccl: CUDA tensors only
    seconds = time.perf_counter() - start
    record = {
        "epoch": epoch + 1,
        "loss": float(totals[0] / max(totals[1], 1)),
        "clean_acc": _ratio(totals[2], totals[3]),
        "adv_acc": _ratio(totals[4], totals[5]),
        "lr_end": float(optimizer.param_groups[0]["lr"]),
        "seconds": round(seconds, 3),
        "images_per_s": round(float(totals[1]) / max(seconds, 1e-9), 1),
    }
    if ctx.is_main:
        _console().print(
            f"epoch {epoch + 1}/{cfg.epochs}  loss {record['loss']:.4f}  train acc clean "
            f"{_pct(record['clean_acc'])} adv {_pct(record['adv_acc'])}  ({seconds:.1f} s, "
            f"{record['images_per_s']:.0f} img/s)"
        )
    return record


def _check_finite_loss(trainer, loss: float, epoch: int, step: int, lr: float) -> None:
    """Stop at the first non-finite loss (every rank agrees: one flag is summed over ranks),
    before the diverged weights can reach a checkpoint."""
    bad = 0.0 if math.isfinite(loss) else 1.0
    if trainer.ctx.enabled:
        bad = float(all_reduce_sum([bad], trainer.ctx, trainer.device)[0])
    if bad:
        raise TrainingError(trainer.state.diverged(
            f"the loss is {loss} at epoch {epoch + 1}, step {step + 1} (lr {lr:g})"))


def evaluate(trainer, epoch: int):
    """SA/RA on (a subset of) the held-out split at the smallest and largest training λ and
    every width. Rank 0 evaluates; the others wait at the next barrier."""
    if not trainer.ctx.is_main:
        return None
    from oat_edge.training.datasets import eval_split, load_dataset
    from oat_edge.training.evaluate import evaluate_model

    cfg, model = trainer.cfg, trainer.model
    test_set = load_dataset(cfg.dataset, eval_split(cfg.dataset), cfg.data_dir, cfg.data_options())
    lams = sorted({cfg.lambdas[0], cfg.lambdas[-1]})
    records = evaluate_model(
        model, test_set, lambdas=lams, widths=list(model.widths), attacks=(trainer.attack,),
        max_images=cfg.eval_max_images, progress=False, seed=derive_seed(cfg.seed, epoch, STREAM_EVAL) % 2**31,
    )
    model.set_width(trainer.step.train_widths[0])
    for r in records:
        ra = ", ".join(f"{k} {_pct(v)}" for k, v in r["ra"].items())
        _console().print(f"  eval λ={r['lam']:g} width={r['width']:g}: SA {_pct(r['sa'])}  RA {ra}")
    return records


def _ratio(a, b) -> float:
    return float(a) / float(b) if b else float("nan")


def _pct(x) -> str:
    return "  n/a" if x is None or x != x else f"{100 * x:5.1f}%"


_CONSOLE = None


def _console():
    global _CONSOLE
    if _CONSOLE is None:
        from rich.console import Console

        _CONSOLE = Console(stderr=True)
    return _CONSOLE


class _EpochProgress:
    """A rich progress bar for one epoch with running loss / accuracy / lr / throughput."""

    def __init__(self, enabled: bool, epoch: int, epochs: int, steps: int):
        self.enabled = enabled and _console().is_terminal  # logs get the per-epoch lines only
        self.progress = None
        if self.enabled:
            self.progress = progress_bar(True, f"epoch {epoch + 1}/{epochs}", stats=True, console=_console())
            self.task = self.progress.add_task("", total=steps, stats="")

    def __enter__(self):
        if self.progress is not None:
            self.progress.start()
        return self

    def update(self, loss, clean, adv, lr, ips):
        if self.progress is not None:
            stats = f"loss {loss:.3f} acc clean {_pct(clean)} adv {_pct(adv)} lr {lr:.4f} {ips:.0f} img/s"
            self.progress.update(self.task, advance=1, stats=stats)

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.stop()
        return False
