"""A training run of OAT, OATS, PGD-AT or PGD-ATS, put together from its parts:

| part                         | module                   |
|------------------------------|--------------------------|
| device, threads, DDP, shards | training/distributed.py  |
| the step (λ draw, attack, loss, optimiser, schedule, AMP) | training/step.py |
| the epochs, evaluation, console | training/loop.py      |
| checkpoint and resume        | training/state.py        |

``Trainer`` builds them from a ``TrainConfig``; ``fit()`` trains to the end and returns the
checkpoint path; ``train_step(epoch, step)`` is one optimizer step (used by the tests and the
throughput benchmark). On CUDA the model uses channels_last memory format.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import torch

from oat_edge.checkpoint import load_checkpoint
from oat_edge.errors import ConfigError
from oat_edge.models import create_model, get_model_defaults
from oat_edge.training import loop
from oat_edge.training.config import CONDITIONED_METHODS, TrainConfig
from oat_edge.training.distributed import (
    DistContext,
    init_distributed,
    per_rank_batch,
    pick_device,
    rank_device,
    set_threads,
    steps_per_epoch,
)
from oat_edge.training.state import RunState, check_resume
from oat_edge.training.step import StepStats, TrainStep


def model_kwargs(cfg: TrainConfig, info: Dict[str, Any]) -> Dict[str, Any]:
    """Every constructor kwarg of the run's model, as plain values (lists, not tuples), so
    ``create_model(arch, **kwargs)`` rebuilds it from the checkpoint alone."""
    conditioned = cfg.method in CONDITIONED_METHODS
    kwargs = dict(get_model_defaults(cfg.arch))
    # OAT/OATS: FiLM + dual BN unless an ablation turns one off (--arch-kwargs '{"dual_bn": false}').
    kwargs.update(code_seed=int(cfg.seed), film=conditioned, dual_bn=conditioned)
    kwargs.update(cfg.arch_kwargs)
    kwargs.update(
        num_classes=int(info["num_classes"]),
        in_chans=int(info["input_shape"][0]),
        mean=[float(v) for v in info["mean"]],
        std=[float(v) for v in info["std"]],
        widths=[float(w) for w in cfg.widths],
        train_lambdas=[float(v) for v in cfg.lambdas],
    )
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in kwargs.items()}


class Trainer:
    """The model, data, step and state of a run (see the module docstring for the parts)."""

    def __init__(self, config: TrainConfig, resume: Optional[str] = None, dist_ctx: Optional[DistContext] = None,
                 train_set=None):
        cfg = config.resolved()
        self.device = pick_device(cfg.device)
        if cfg.amp in ("bf16", "fp16") and self.device.type != "cuda":
            raise ConfigError(f"--amp {cfg.amp} needs a CUDA device; on the CPU training runs in float32")
        self.ctx = dist_ctx if dist_ctx is not None else init_distributed(self.device.type)
        try:
            self._setup(cfg, resume, train_set)
        except BaseException:
            self.ctx.close()  # leave no process group behind a refused configuration
            raise

    def _setup(self, cfg: TrainConfig, resume: Optional[str], train_set) -> None:
        from oat_edge.training.attacks import make_attack

        self.device = rank_device(self.device, self.ctx)
        self.per_rank_batch = per_rank_batch(cfg.batch_size, self.ctx)
        set_threads(cfg.threads, self.ctx, self.device)
        payload = None
        if resume is not None:
            payload = load_checkpoint(resume)
            check_resume(payload, cfg, resume)
        self.cfg = cfg
        self._load_data(train_set)
        self.arch_kwargs = model_kwargs(cfg, self.info)
        with torch.random.fork_rng(devices=[]):  # the caller's RNG stays as it was
            torch.manual_seed(cfg.seed)  # initial weights: a function of the seed
            self.model = create_model(cfg.arch, **self.arch_kwargs).to(self.device)
        if self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        attack = make_attack(cfg.attack, eps=cfg.eps, step_size=cfg.step_size, dataset=cfg.dataset)
        self.step = TrainStep(cfg, self.model, attack, self.ctx, self.device, cfg.epochs * self.steps_per_epoch)
        self.state = RunState(cfg, self.ctx.is_main, resume)
        if payload is not None:
            self.state.restore(payload, self.model, self.step)

    def _load_data(self, train_set) -> None:
        from oat_edge.training.datasets import dataset_info, load_dataset

        cfg = self.cfg
        self.info = dataset_info(cfg.dataset, cfg.data_options())
        if train_set is None:
            train_set = load_dataset(cfg.dataset, "train", cfg.data_dir, cfg.data_options())
        if cfg.max_train_images is not None and cfg.max_train_images < len(train_set):
            train_set = train_set.subset(cfg.max_train_images)
        self.train_set = train_set
        self.steps_per_epoch = steps_per_epoch(len(train_set), self.per_rank_batch, self.ctx)
        if self.steps_per_epoch < 1:
            raise ConfigError(
                f"{len(train_set)} training images make no full batch of {cfg.batch_size}; lower --batch-size"
            )

    # The step's parts, under the names callers use.
    @property
    def attack(self):
        return self.step.attack

    @attack.setter
    def attack(self, attack) -> None:  # the step keeps the run's ε schedule for the new attack
        self.step.attack = attack

    @property
    def optimizer(self):
        return self.step.optimizer

    @property
    def scheduler(self):
        return self.step.scheduler

    @property
    def scaler(self):
        return self.step.scaler

    @property
    def amp_dtype(self):
        return self.step.amp_dtype

    @property
    def step_module(self):
        return self.step.step_module

    @property
    def start_epoch(self) -> int:
        return self.state.start_epoch

    @start_epoch.setter
    def start_epoch(self, epoch: int) -> None:
        self.state.start_epoch = epoch

    @property
    def history(self):
        return self.state.history

    @property
    def last_eval(self):
        return self.state.last_eval

    def batches(self, epoch: int, start: int = 0):
        """This rank's training batches of ``epoch`` from batch ``start`` on."""
        from oat_edge.training.datasets import epoch_batches

        return epoch_batches(
            self.train_set, self.per_rank_batch, self.cfg.seed, epoch, augment=True, drop_last=True,
            shuffle=True, rank=self.ctx.rank, world_size=self.ctx.world_size, start_batch=start,
            device=self.device,
        )

    def step_lambdas(self, epoch: int, step: int) -> torch.Tensor:
        return self.step.lambdas(epoch, step)

    def attack_scale(self, epoch: int) -> float:
        return self.step.attack_scale(epoch)

    def train_step(self, epoch: int, step: int, x: Optional[torch.Tensor] = None,
                   y: Optional[torch.Tensor] = None) -> StepStats:
        """One optimizer step on batch ``step`` of ``epoch`` (fetched unless x, y are given)."""
        if x is None:
            x, y = next(iter(self.batches(epoch, start=step)))
        return self.step(epoch, step, x, y)

    def fit(self, stop_after: Optional[int] = None) -> Path:
        """Train to the end (or stop after epoch ``stop_after``, as if the process had been
        killed there — for tests), checkpointing every epoch."""
        return loop.fit(self, stop_after)

    def payload(self, epoch: int) -> Dict[str, Any]:
        return self.state.payload(self, epoch)

    def save(self, epoch: int) -> Optional[Path]:
        return self.state.save(self, epoch)


def train(config: TrainConfig, resume: Optional[str] = None) -> Path:
    """Train (or continue from ``resume``) and return the checkpoint path. Under torchrun
    (WORLD_SIZE > 1) every process calls this; rank 0 writes the checkpoint."""
    trainer = Trainer(config, resume=resume)
    try:
        return trainer.fit()
    finally:
        trainer.ctx.close()
