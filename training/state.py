"""A run's checkpoint: what it holds, writing it, and continuing a run from it.

Exact resume on the CPU: nothing in a run reads a random state carried from step to step (see
training/step.py and ``datasets.epoch_batches``), so a run resumed from the checkpoint of epoch
e ends with exactly the weights of an uninterrupted run. The global RNG states are still saved,
and restored on resume.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from oat_edge import __version__
from oat_edge.checkpoint import load_checkpoint, nonfinite_tensors, save_checkpoint
from oat_edge.errors import CheckpointError, TrainingError
from oat_edge.fileio import plain
from oat_edge.training.config import TrainConfig

# Config fields a resumed run must share with the checkpoint (the rest — epochs, threads,
# device, output, evaluation, progress — may change between the two halves of a run).
RESUME_FIXED = (
    "dataset", "method", "arch", "arch_kwargs", "widths", "lambdas", "batch_size", "lr", "momentum",
    "weight_decay", "seed", "attack", "eps", "eps_warmup", "step_size", "max_train_images", "clean_pass", "film_lr_mult",
    "image_size", "val_fraction", "split_seed",
)


class RunState:
    """The epoch reached, the metrics so far, and the checkpoint file of a run. ``save`` writes
    it (rank 0, atomically); ``restore`` loads a resumed run's weights and optimiser state."""

    def __init__(self, cfg: TrainConfig, is_main: bool, resume: Optional[str]):
        self.cfg = cfg
        self.is_main = is_main
        self.resume_path = resume
        self.start_epoch = 0
        self.history: List[Dict[str, Any]] = []
        self.last_eval = None
        self.wrote_checkpoint = False

    def payload(self, trainer, epoch: int) -> Dict[str, Any]:
        """The checkpoint of ``trainer`` after ``epoch`` epochs."""
        cfg, info, step = self.cfg, trainer.info, trainer.step
        return {
            "arch": cfg.arch,
            "arch_kwargs": trainer.arch_kwargs,
            "model": {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()},
            "method": cfg.method,
            "dataset": _dataset_record(info, len(trainer.train_set)),
            "config": cfg.to_dict(),
            "epoch": int(epoch),
            "widths": [float(w) for w in trainer.model.widths],
            "train_lambdas": [float(v) for v in cfg.lambdas],
            "attack": plain(step.attack.describe()),
            "optimizer": step.optimizer.state_dict(),
            "scheduler": step.scheduler.state_dict(),
            "scaler": step.scaler.state_dict() if step.scaler.is_enabled() else {},
            "rng": _rng_state(),
            "metrics": {"history": plain(self.history), "last_eval": plain(self.last_eval)},
            "world_size": trainer.ctx.world_size,
            "oat_edge_version": __version__,
        }

    def save(self, trainer, epoch: int) -> Optional[Path]:
        """Rank 0 writes the checkpoint atomically; other ranks write nothing."""
        if not self.is_main:
            return None
        bad = nonfinite_tensors(trainer.model.state_dict())
        if bad:
            # every loss of the epoch was finite (checked per step), so its last update did it
            raise TrainingError(self.diverged(f"{len(bad)} weight tensors ({bad[0]}, ...) hold NaN/inf after the "
                                              f"last step of epoch {epoch} (step {trainer.steps_per_epoch})"))
        path = save_checkpoint(self.cfg.out, self.payload(trainer, epoch))
        self.wrote_checkpoint = True
        return path

    def restore(self, payload: Dict[str, Any], model, step) -> None:
        try:
            model.load_state_dict(payload["model"])
            step.optimizer.load_state_dict(payload["optimizer"])
            step.scheduler.load_state_dict(payload["scheduler"])
            if payload.get("scaler") and step.scaler.is_enabled():
                step.scaler.load_state_dict(payload["scaler"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"cannot resume from this checkpoint: {str(e)[:400]}") from None
        bad = nonfinite_tensors(payload["model"])
        if bad:
            raise CheckpointError(f"cannot resume: the checkpoint holds non-finite weights ({bad[0]}, ...); "
                                  "the run that wrote it diverged")
        if payload.get("rng"):
            _set_rng_state(payload["rng"])
        self.start_epoch = int(payload["epoch"])
        metrics = payload.get("metrics") or {}
        self.history = list(metrics.get("history") or [])
        self.last_eval = metrics.get("last_eval")

    def writes_over_resumed(self) -> bool:
        """Whether the output is the checkpoint this run resumed from."""
        return self.resume_path is not None and Path(self.cfg.out).resolve() == Path(self.resume_path).resolve()

    def diverged(self, what: str) -> str:
        """The message of a diverged run: what happened and which checkpoint is left."""
        out = Path(self.cfg.out)
        # only a checkpoint of this training is "good": one this run wrote, or the one it resumed
        if (self.wrote_checkpoint or self.writes_over_resumed()) and out.is_file():
            kept = f"the last good checkpoint {out} was kept"
        elif out.exists():
            kept = f"no checkpoint was written ({out} is left as it was)"
        else:
            kept = "no checkpoint was written"
        return f"training diverged: {what}; {kept}; lower --lr (or check the data) and train again"


def _dataset_record(info: Dict[str, Any], train_images: int) -> Dict[str, Any]:
    """The checkpoint's ``dataset``: the facts, the raw → input transform (every dataset) and,
    for own data, what rebuilds the split."""
    from oat_edge.training.datasets import builtin_preprocessing

    record = {
        "name": info["name"],
        "num_classes": int(info["num_classes"]),
        "input_shape": [int(v) for v in info["input_shape"]],
        "mean": [float(v) for v in info["mean"]],
        "std": [float(v) for v in info["std"]],
        "split": f"train ({train_images} images); {info['split']}",
        "train_images": train_images,
        "augment": info.get("augment", ""),
        "preprocessing": plain(info.get("preprocessing") or builtin_preprocessing(info["name"])),
    }
    for key in ("class_names", "options", "source", "sizes"):
        if key in info and info.get("class_names") is not None:
            record[key] = plain(info[key])
    return record


def check_resume(payload: Dict[str, Any], cfg: TrainConfig, where: str) -> None:
    """One clear error when a checkpoint cannot continue this run."""
    if "optimizer" not in payload or "scheduler" not in payload:
        raise CheckpointError(f"{where} has no optimizer/scheduler state (an export-only checkpoint); it cannot be resumed")
    saved = payload.get("config") or {}
    _check_same_run(payload, cfg.method, cfg.dataset, cfg.arch, where)
    mine = cfg.to_dict()
    differ = [k for k in RESUME_FIXED if k in saved and plain(saved[k]) != mine.get(k)]
    if differ:
        detail = ", ".join(f"{k}: checkpoint {saved[k]!r} vs {mine.get(k)!r}" for k in differ)
        raise CheckpointError(f"cannot resume {where} with a different training setup ({detail})")


def _check_same_run(payload, method, dataset, arch, where) -> None:
    ours = (method, dataset, arch)
    theirs = (payload["method"], (payload.get("dataset") or {}).get("name"), payload["arch"])
    if ours != theirs:
        raise CheckpointError(
            f"cannot resume {where}: it was trained with method {theirs[0]} on {theirs[1]} ({theirs[2]}), "
            f"this run asks for method {ours[0]} on {ours[1]} ({ours[2]})"
        )


def resume_config(path: str, overrides: Dict[str, Any]) -> TrainConfig:
    """The config stored in checkpoint ``path`` with ``overrides`` (the arguments a user gave
    explicitly) applied; contradictions are caught by ``check_resume``."""
    payload = load_checkpoint(path)
    saved = dict(payload.get("config") or {})
    if not saved:
        raise CheckpointError(f"{path} records no training config; it cannot be resumed")
    saved.setdefault("clean_pass", "weighted")  # what runs before the option existed did
    saved.update({k: v for k, v in overrides.items() if v is not None})
    # Checked before anything else, so `--resume ckpt --method X` names the real conflict.
    _check_same_run(payload, saved.get("method"), saved.get("dataset"), saved.get("arch"), path)
    return TrainConfig.from_dict(saved)


def _rng_state() -> Dict[str, Any]:
    """Global RNG states as plain values (tensors, ints, lists): loadable with weights_only."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Dict[str, Any]) -> None:
    try:
        torch.set_rng_state(state["torch"])
        n = state["numpy"]
        np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
        p = state["python"]
        random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint RNG state is malformed: {e}") from None
