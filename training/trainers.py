"""OAT, OATS, PGD-AT and PGD-ATS training: one loop, one step, the methods differ only in
which widths a step visits and where λ comes from.

Per training step (a batch x, y with one λ per sample):

    for each width w of the method (OATS / PGD-ATS: all widths, largest first; OAT / PGD-AT: 1.0):
        set_width(w)
        x_adv = PGD(model, x[λ>0], y[λ>0], λ[λ>0])          # each sample attacked at its own λ,
                                                            # BN in eval mode (the attack does it)
        loss  = mean_i (1-λ_i)·CE(model(x_i, λ_i), y_i) + λ_i·CE(model(x_adv_i, λ_i), y_i)
        loss.backward()                                     # gradients add up over widths
    optimizer.step()                                        # one step per batch (Algorithm 2)

- OAT (Algorithm 1 of Wang et al. 2020): λ drawn per sample, uniformly from the training set
  (default S1 = {0, .1, .2, .3, .4, 1}); the model routes each sample to BN_c (λ = 0) or BN_a
  (λ > 0) and conditions FiLM on its λ. One width.
- OATS (Algorithm 2): the same λ draw for every width of the step, and one optimizer step
  after all widths.
- PGD-AT / PGD-ATS: a fixed λ for every sample (default 1: pure adversarial CE) on a network
  without FiLM and with a single BN (``film=False, dual_bn=False``).

The clean pass sees every sample, λ = 1 ones too (with loss weight 0), as in the reference
implementation: BN_a's batch statistics and running averages then mix clean and adversarial
images. ``clean_pass="weighted"`` (an option) skips the samples whose clean term has zero
weight. The attack and the adversarial pass see only samples with λ > 0; BN_c's running
statistics stay a function of clean λ = 0 images only.

Determinism (exact resume on the CPU): nothing reads a random state carried from step to step.
The shuffle and augmentation of epoch e come from ``epoch_batches(seed, e)``; the λ draw of step
s from a generator seeded with (seed, e, s); the global torch RNG (PGD random start, dropout) is
re-seeded from (seed, e, s, rank) at the start of every step. A run resumed from the checkpoint
of epoch e therefore ends with exactly the weights of an uninterrupted run. The global RNG
states are still saved in the checkpoint, and training runs inside ``torch.random.fork_rng`` so
the caller's RNG is left as it was.

LR schedule: cosine from ``lr`` to 0, updated every iteration (not every epoch), as a
closed-form ``LambdaLR`` so a resumed schedule has no accumulated rounding.

On CUDA: channels_last memory
format, autocast in bf16 where supported (fp16 with a GradScaler otherwise), and DDP over nccl.
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from oat_edge import __version__
from oat_edge.checkpoint import load_checkpoint, nonfinite_tensors, save_checkpoint
from oat_edge.errors import CheckpointError, ConfigError, TrainingError
from oat_edge.fileio import plain
from oat_edge.models import create_model, get_model_defaults
from oat_edge.models.base import FiLMCached
from oat_edge.progress import progress_bar
from oat_edge.training.config import CONDITIONED_METHODS, TrainConfig
from oat_edge.training.distributed import (
    DistContext,
    all_reduce_sum,
    average_buffers,
    init_distributed,
    wrap_ddp,
)

# Streams of randomness, each a pure function of (seed, epoch, step[, rank]).
_STREAM_LAMBDA = 1
_STREAM_STEP = 2
_STREAM_EVAL = 3

# Config fields a resumed run must share with the checkpoint (the rest — epochs, threads,
# device, output, evaluation, progress — may change between the two halves of a run).
RESUME_FIXED = (
    "dataset", "method", "arch", "arch_kwargs", "widths", "lambdas", "batch_size", "lr", "momentum",
    "weight_decay", "seed", "attack", "eps", "eps_warmup", "step_size", "max_train_images", "clean_pass", "film_lr_mult",
    "image_size", "val_fraction", "split_seed",
)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from non-negative integers (numpy SeedSequence: no collisions between
    e.g. (seed=0, epoch=10) and (seed=1, epoch=0))."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0]
    return int(state >> np.uint64(1))


def sample_lambdas(lambdas: Sequence[float], n: int, generator: torch.Generator) -> torch.Tensor:
    """n values drawn uniformly (with replacement) from the training λ set, float32 [n]."""
    choices = torch.tensor(list(lambdas), dtype=torch.float32)
    if len(lambdas) == 1:
        return choices.expand(n).clone()
    return choices[torch.randint(len(lambdas), (n,), generator=generator)]


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


class _StepForward(nn.Module):
    """The clean and adversarial passes of one width as ONE module call, so DDP sees exactly
    one forward per backward (two separate DDP forwards before one backward confuse its
    unused-parameter bookkeeping). The passes stay separate so each BN normalises clean and
    adversarial images with their own batch statistics, as in the reference code."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x_clean, lam_clean, x_adv, lam_adv):
        out_clean = self.model(x_clean, lam_clean) if x_clean is not None else None
        out_adv = self.model(x_adv, lam_adv) if x_adv is not None else None
        return out_clean, out_adv


@dataclass
class StepStats:
    loss: float = 0.0  # summed over widths, mean over the batch
    clean_correct: int = 0  # at the largest width, samples in the clean pass
    clean_seen: int = 0
    adv_correct: int = 0
    adv_seen: int = 0


class Trainer:
    """Holds the model, optimizer, schedule and data of a run. ``fit()`` trains to the end and
    returns the checkpoint path; ``train_step(epoch, step)`` is one optimizer step (used by
    the tests and the throughput benchmark)."""

    def __init__(self, config: TrainConfig, resume: Optional[str] = None, dist_ctx: Optional[DistContext] = None,
                 train_set=None):
        cfg = config.resolved()
        self.device = _pick_device(cfg.device)
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
        from oat_edge.training.datasets import dataset_info, load_dataset

        if self.ctx.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.ctx.local_rank)
        if cfg.batch_size % self.ctx.world_size:
            raise ConfigError(
                f"batch size {cfg.batch_size} is the global batch; it must divide evenly over "
                f"{self.ctx.world_size} processes"
            )
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        elif self.ctx.enabled and self.device.type == "cpu":
            # Several CPU ranks on one machine: share the cores instead of oversubscribing.
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.ctx.world_size))

        payload = None
        if resume is not None:
            payload = load_checkpoint(resume)
            check_resume(payload, cfg, resume)
        self.cfg = cfg
        self.info = dataset_info(cfg.dataset, cfg.data_options())
        if train_set is None:
            train_set = load_dataset(cfg.dataset, "train", cfg.data_dir, cfg.data_options())
        if cfg.max_train_images is not None and cfg.max_train_images < len(train_set):
            train_set = train_set.subset(cfg.max_train_images)
        self.train_set = train_set
        self.per_rank_batch = cfg.batch_size // self.ctx.world_size
        self.steps_per_epoch = self._count_steps()
        if self.steps_per_epoch < 1:
            raise ConfigError(
                f"{len(train_set)} training images make no full batch of {cfg.batch_size}; lower --batch-size"
            )

        self.arch_kwargs = model_kwargs(cfg, self.info)
        with torch.random.fork_rng(devices=[]):  # the caller's RNG stays as it was
            torch.manual_seed(cfg.seed)  # initial weights: a function of the seed
            self.model = create_model(cfg.arch, **self.arch_kwargs).to(self.device)
        if self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        # Largest width first (the sandwich order of slimmable training); one width for OAT/PGD-AT.
        self.train_widths = sorted(self.model.widths, reverse=True)
        self.step_module = wrap_ddp(_StepForward(self.model), self.ctx, self.device)
        self.optimizer = torch.optim.SGD(
            _param_groups(self.model, cfg.lr, cfg.film_lr_mult), lr=cfg.lr, momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
        )
        total = cfg.epochs * self.steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda it: 0.5 * (1.0 + math.cos(math.pi * min(it, total) / total))
        )
        self.amp_dtype = _amp_dtype(cfg.amp, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.attack = make_attack(cfg.attack, eps=cfg.eps, step_size=cfg.step_size, dataset=cfg.dataset)
        self._attack_radius = (self.attack.eps, getattr(self.attack, "step_size", None))
        self.history: List[Dict[str, Any]] = []
        self.last_eval = None
        self.start_epoch = 0
        self.resume_path = resume
        self._wrote_checkpoint = False
        if payload is not None:
            self._restore(payload)

    # --- data -----------------------------------------------------------------------------
    def _count_steps(self) -> int:
        n = len(self.train_set)
        per_rank = len(range(self.ctx.rank, (n // self.ctx.world_size) * self.ctx.world_size, self.ctx.world_size))
        return per_rank // self.per_rank_batch

    def _batches(self, epoch: int, start: int = 0):
        from oat_edge.training.datasets import epoch_batches

        return epoch_batches(
            self.train_set, self.per_rank_batch, self.cfg.seed, epoch, augment=True, drop_last=True,
            shuffle=True, rank=self.ctx.rank, world_size=self.ctx.world_size, start_batch=start,
            device=self.device,
        )

    def step_lambdas(self, epoch: int, step: int) -> torch.Tensor:
        """This rank's per-sample λ of a step. Drawn for the whole global batch and sliced the
        way ``epoch_batches`` shards positions, so sample i of global batch s gets the same λ
        with any number of processes."""
        if self.cfg.method not in CONDITIONED_METHODS:
            return torch.full((self.per_rank_batch,), self.cfg.lambdas[0], dtype=torch.float32)
        gen = torch.Generator().manual_seed(derive_seed(self.cfg.seed, epoch, step, _STREAM_LAMBDA))
        lams = sample_lambdas(self.cfg.lambdas, self.cfg.batch_size, gen)
        return lams[self.ctx.rank :: self.ctx.world_size]

    def attack_scale(self, epoch: int) -> float:
        """The share of ε the training attack uses in ``epoch`` (0-based): (epoch + 1) / W over
        the first W = eps_warmup epochs, then 1. A function of the epoch alone, so a resumed
        run attacks exactly as an uninterrupted one."""
        warm = int(self.cfg.eps_warmup or 0)
        return 1.0 if warm <= 0 else min(1.0, (epoch + 1) / warm)

    def _set_attack_radius(self, epoch: int) -> None:
        eps, step = self._attack_radius
        scale = self.attack_scale(epoch)
        self.attack.eps = eps * scale
        if isinstance(step, float):  # a fixed step shrinks with ε (APGD's own schedule follows ε)
            self.attack.step_size = step * scale

    # --- one step --------------------------------------------------------------------------
    def train_step(self, epoch: int, step: int, x: Optional[torch.Tensor] = None,
                   y: Optional[torch.Tensor] = None) -> StepStats:
        """One optimizer step on batch ``step`` of ``epoch`` (fetched unless x, y are given)."""
        if x is None:
            x, y = next(iter(self._batches(epoch, start=step)))
        torch.manual_seed(derive_seed(self.cfg.seed, epoch, step, self.ctx.rank, _STREAM_STEP))
        self._set_attack_radius(epoch)
        lam = self.step_lambdas(epoch, step)  # stays on the host (see _step)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return self._step(x, y, lam)

    def _autocast(self, enabled: bool = True):
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=enabled and self.amp_dtype is not None)

    def _step(self, x: torch.Tensor, y: torch.Tensor, lam: torch.Tensor) -> StepStats:
        model, stats, n = self.model, StepStats(), x.shape[0]
        model.train()
        self.optimizer.zero_grad(set_to_none=True)
        # Which samples take the clean / adversarial pass is decided on the host: the model gets
        # host-side λ too, so neither asks the GPU anything (no device syncs inside the step).
        lam_host = lam.detach().cpu()
        clean_host = (lam_host < 1).nonzero(as_tuple=True)[0] if self.cfg.clean_pass == "weighted" else torch.arange(n)
        adv_host = (lam_host > 0).nonzero(as_tuple=True)[0]
        clean_idx, adv_idx = clean_host.to(x.device), adv_host.to(x.device)
        x_c, y_c, lam_c = x[clean_idx], y[clean_idx], lam_host[clean_host]
        y_a, lam_a = y[adv_idx], lam_host[adv_host]
        w_c, w_a = (1 - lam_c).to(x.device), lam_a.to(x.device)  # loss weights, on the device
        # PGD random starts: a CPU generator of this step (the attack moves the noise to x's device).
        attack_gen = torch.Generator().manual_seed(int(torch.randint(2**62, (1,))))
        for i, width in enumerate(self.train_widths):
            model.set_width(width)
            x_adv = None
            if adv_idx.numel():
                # fp16 input gradients can underflow to 0 (and sign(0) = 0): attack in fp32 then.
                with self._autocast(enabled=self.amp_dtype == torch.bfloat16):
                    # FiLMCached: the attack's passes share one set of FiLM γ/β (no weight
                    # update in between), instead of running the generators at every step.
                    x_adv = self.attack(FiLMCached.wrap(model), x[adv_idx], y_a, lam_a, generator=attack_gen).detach()
            with self._autocast():
                out_c, out_a = self.step_module(
                    # λ as numpy: DDP moves tensor arguments to the GPU, which the model would
                    # only copy back (a sync per pass).
                    x_c if clean_idx.numel() else None, lam_c.numpy(), x_adv, lam_a.numpy()
                )
                loss = x.new_zeros(())
                if out_c is not None:
                    loss = loss + (w_c * F.cross_entropy(out_c.float(), y_c, reduction="none")).sum()
                if out_a is not None:
                    loss = loss + (w_a * F.cross_entropy(out_a.float(), y_a, reduction="none")).sum()
                loss = loss / n
            self.scaler.scale(loss).backward()
            stats.loss += float(loss.detach())
            if i == 0:
                if out_c is not None:
                    stats.clean_correct += int((out_c.argmax(1) == y_c).sum())
                    stats.clean_seen += int(y_c.numel())
                if out_a is not None:
                    stats.adv_correct += int((out_a.argmax(1) == y_a).sum())
                    stats.adv_seen += int(y_a.numel())
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        model.set_width(self.train_widths[0])
        return stats

    # --- the run ----------------------------------------------------------------------------
    def fit(self, stop_after: Optional[int] = None) -> Path:
        """Train from ``start_epoch`` to ``cfg.epochs`` (or stop after epoch ``stop_after``,
        as if the process had been killed there — for tests), checkpointing every epoch."""
        cfg, ctx = self.cfg, self.ctx
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        end = cfg.epochs if stop_after is None else min(cfg.epochs, stop_after)
        with torch.random.fork_rng(devices=devices):
            if self.start_epoch >= cfg.epochs and ctx.is_main:
                _console().print(f"[bold]{cfg.out}[/]: already trained for {cfg.epochs} epochs; nothing to do")
                if self.resume_path is None or Path(cfg.out).resolve() != Path(self.resume_path).resolve():
                    self.save(self.start_epoch)
            for epoch in range(self.start_epoch, end):
                record = self._train_epoch(epoch)
                average_buffers(self.model, ctx)
                if cfg.eval_every and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
                    self.last_eval = self._evaluate(epoch)
                    record["eval"] = self.last_eval
                self.history.append(record)
                self.save(epoch + 1)
                ctx.barrier()
        return Path(cfg.out)

    def _train_epoch(self, epoch: int) -> Dict[str, Any]:
        cfg, ctx = self.cfg, self.ctx
        totals = np.zeros(6)  # loss·n, n, clean correct, clean seen, adv correct, adv seen
        start = time.perf_counter()
        with _EpochProgress(ctx.is_main and cfg.progress, epoch, cfg.epochs, self.steps_per_epoch) as bar:
            for step, (x, y) in enumerate(self._batches(epoch)):
                lr = self.optimizer.param_groups[0]["lr"]
                s = self.train_step(epoch, step, x, y)
                self._check_finite_loss(s.loss, epoch, step, lr)
                totals += [s.loss * x.shape[0], x.shape[0], s.clean_correct, s.clean_seen, s.adv_correct, s.adv_seen]
                bar.update(loss=totals[0] / totals[1], clean=_ratio(totals[2], totals[3]),
                           adv=_ratio(totals[4], totals[5]), lr=lr, ips=totals[1] / (time.perf_counter() - start))
        totals = np.asarray(all_reduce_sum(totals.tolist(), ctx, self.device))  # nccl: CUDA tensors only
        seconds = time.perf_counter() - start
        record = {
            "epoch": epoch + 1,
            "loss": float(totals[0] / max(totals[1], 1)),
            "clean_acc": _ratio(totals[2], totals[3]),
            "adv_acc": _ratio(totals[4], totals[5]),
            "lr_end": float(self.optimizer.param_groups[0]["lr"]),
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

    def _check_finite_loss(self, loss: float, epoch: int, step: int, lr: float) -> None:
        """Stop at the first non-finite loss (every rank agrees: one flag is summed over ranks),
        before the diverged weights can reach a checkpoint."""
        bad = 0.0 if math.isfinite(loss) else 1.0
        if self.ctx.enabled:
            bad = float(all_reduce_sum([bad], self.ctx, self.device)[0])
        if bad:
            raise TrainingError(self._diverged(f"the loss is {loss} at epoch {epoch + 1}, step {step + 1} (lr {lr:g})"))

    def _diverged(self, what: str) -> str:
        out = Path(self.cfg.out)
        # only a checkpoint of this training is "good": one this run wrote, or the one it resumed
        ours = self._wrote_checkpoint or (self.resume_path is not None and out.resolve() == Path(self.resume_path).resolve())
        if ours and out.is_file():
            kept = f"the last good checkpoint {out} was kept"
        elif out.exists():
            kept = f"no checkpoint was written ({out} is left as it was)"
        else:
            kept = "no checkpoint was written"
        return f"training diverged: {what}; {kept}; lower --lr (or check the data) and train again"

    def _evaluate(self, epoch: int):
        """SA/RA on (a subset of) the test split at the smallest and largest training λ and
        every width. Rank 0 evaluates; the others wait at the next barrier."""
        if not self.ctx.is_main:
            return None
        from oat_edge.training.datasets import eval_split, load_dataset
        from oat_edge.training.evaluate import evaluate_model

        test_set = load_dataset(self.cfg.dataset, eval_split(self.cfg.dataset), self.cfg.data_dir,
                                self.cfg.data_options())
        lams = sorted({self.cfg.lambdas[0], self.cfg.lambdas[-1]})
        records = evaluate_model(
            self.model, test_set, lambdas=lams, widths=list(self.model.widths), attacks=(self.attack,),
            max_images=self.cfg.eval_max_images, progress=False, seed=derive_seed(self.cfg.seed, epoch, _STREAM_EVAL) % 2**31,
        )
        self.model.set_width(self.train_widths[0])
        for r in records:
            ra = ", ".join(f"{k} {_pct(v)}" for k, v in r["ra"].items())
            _console().print(f"  eval λ={r['lam']:g} width={r['width']:g}: SA {_pct(r['sa'])}  RA {ra}")
        return records

    # --- checkpoints --------------------------------------------------------------------------
    def payload(self, epoch: int) -> Dict[str, Any]:
        cfg, info = self.cfg, self.info
        return {
            "arch": cfg.arch,
            "arch_kwargs": self.arch_kwargs,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "method": cfg.method,
            "dataset": {
                "name": info["name"],
                "num_classes": int(info["num_classes"]),
                "input_shape": [int(v) for v in info["input_shape"]],
                "mean": [float(v) for v in info["mean"]],
                "std": [float(v) for v in info["std"]],
                "split": f"train ({len(self.train_set)} images); {info['split']}",
                "train_images": len(self.train_set),
                "augment": info.get("augment", ""),
                **self._own_data_record(info),
            },
            "config": cfg.to_dict(),
            "epoch": int(epoch),
            "widths": [float(w) for w in self.model.widths],
            "train_lambdas": [float(v) for v in cfg.lambdas],
            "attack": plain(self.attack.describe()),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "rng": _rng_state(),
            "metrics": {"history": plain(self.history), "last_eval": plain(self.last_eval)},
            "world_size": self.ctx.world_size,
            "oat_edge_version": __version__,
        }

    @staticmethod
    def _own_data_record(info: Dict[str, Any]) -> Dict[str, Any]:
        """The raw → input transform (every dataset) and, for own data, what rebuilds the split."""
        from oat_edge.training.datasets import builtin_preprocessing

        out = {"preprocessing": plain(info.get("preprocessing") or builtin_preprocessing(info["name"]))}
        for key in ("class_names", "options", "source", "sizes"):
            if key in info and info.get("class_names") is not None:
                out[key] = plain(info[key])
        return out

    def save(self, epoch: int) -> Optional[Path]:
        """Rank 0 writes the checkpoint atomically; other ranks write nothing."""
        if not self.ctx.is_main:
            return None
        bad = nonfinite_tensors(self.model.state_dict())
        if bad:
            # every loss of the epoch was finite (checked per step), so its last update did it
            raise TrainingError(self._diverged(f"{len(bad)} weight tensors ({bad[0]}, ...) hold NaN/inf after the "
                                               f"last step of epoch {epoch} (step {self.steps_per_epoch})"))
        path = save_checkpoint(self.cfg.out, self.payload(epoch))
        self._wrote_checkpoint = True
        return path

    def _restore(self, payload: Dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(payload["model"])
            self.optimizer.load_state_dict(payload["optimizer"])
            self.scheduler.load_state_dict(payload["scheduler"])
            if payload.get("scaler") and self.scaler.is_enabled():
                self.scaler.load_state_dict(payload["scaler"])
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


def train(config: TrainConfig, resume: Optional[str] = None) -> Path:
    """Train (or continue from ``resume``) and return the checkpoint path. Under torchrun
    (WORLD_SIZE > 1) every process calls this; rank 0 writes the checkpoint."""
    trainer = Trainer(config, resume=resume)
    try:
        return trainer.fit()
    finally:
        trainer.ctx.close()


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


# --- helpers -----------------------------------------------------------------------------------


def _param_groups(model: nn.Module, lr: float, film_lr_mult: float) -> list:
    """One group, or two when the FiLM generators learn at ``film_lr_mult`` × lr (their
    gradients are small next to the convolutions', so λ-dependence can lag behind)."""
    from oat_edge.layers import FiLM

    if film_lr_mult == 1.0:
        return [{"params": list(model.parameters())}]
    film = {id(p) for m in model.modules() if isinstance(m, FiLM) for p in m.parameters()}
    rest = [p for p in model.parameters() if id(p) not in film]
    groups = [{"params": rest}]
    if film:
        groups.append({"params": [p for p in model.parameters() if id(p) in film], "lr": lr * film_lr_mult})
    return groups


def _pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available to this torch build")
    return torch.device(name)


def _amp_dtype(amp: str, device: torch.device):
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "bf16" or (amp == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


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
