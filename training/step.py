"""One training step of OAT, OATS, PGD-AT and PGD-ATS: the methods differ only in which widths
a step visits and where λ comes from.

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

Randomness of a step: the λ draw of step s comes from a generator seeded with (seed, e, s); the
global torch RNG (PGD random start, dropout) is re-seeded from (seed, e, s, rank) at the start
of every step, so no random state is carried from step to step.

LR schedule: cosine from ``lr`` to 0, updated every iteration (not every epoch), as a
closed-form ``LambdaLR`` so a resumed schedule has no accumulated rounding. On CUDA: autocast
in bf16 where supported (fp16 with a GradScaler otherwise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from oat_edge.models.base import FiLMCached
from oat_edge.training.config import CONDITIONED_METHODS, TrainConfig
from oat_edge.training.distributed import DistContext, wrap_ddp

# Streams of randomness, each a pure function of (seed, epoch, step[, rank]).
STREAM_LAMBDA = 1
STREAM_STEP = 2
STREAM_EVAL = 3


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


class TrainStep:
    """The model's optimiser, schedule, mixed precision and training attack, and the step that
    uses them. ``steps_total`` sizes the cosine schedule (epochs × steps per epoch)."""

    def __init__(self, cfg: TrainConfig, model: nn.Module, attack, ctx: DistContext, device: torch.device,
                 steps_total: int):
        self.cfg, self.ctx, self.device = cfg, ctx, device
        self.model = model
        self.attack = attack
        self.per_rank_batch = cfg.batch_size // ctx.world_size
        # Largest width first (the sandwich order of slimmable training); one width for OAT/PGD-AT.
        self.train_widths = sorted(model.widths, reverse=True)
        self.step_module = wrap_ddp(_StepForward(model), ctx, device)
        self.optimizer = torch.optim.SGD(
            _param_groups(model, cfg.lr, cfg.film_lr_mult), lr=cfg.lr, momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda it: 0.5 * (1.0 + math.cos(math.pi * min(it, steps_total) / steps_total))
        )
        self.amp_dtype = _amp_dtype(cfg.amp, device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self._attack_radius = (attack.eps, getattr(attack, "step_size", None))

    def lambdas(self, epoch: int, step: int) -> torch.Tensor:
        """This rank's per-sample λ of a step. Drawn for the whole global batch and sliced the
        way ``epoch_batches`` shards positions, so sample i of global batch s gets the same λ
        with any number of processes."""
        if self.cfg.method not in CONDITIONED_METHODS:
            return torch.full((self.per_rank_batch,), self.cfg.lambdas[0], dtype=torch.float32)
        gen = torch.Generator().manual_seed(derive_seed(self.cfg.seed, epoch, step, STREAM_LAMBDA))
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

    def __call__(self, epoch: int, step: int, x: torch.Tensor, y: torch.Tensor) -> StepStats:
        """One optimizer step on batch ``step`` of ``epoch``."""
        torch.manual_seed(derive_seed(self.cfg.seed, epoch, step, self.ctx.rank, STREAM_STEP))
        self._set_attack_radius(epoch)
        lam = self.lambdas(epoch, step)  # stays on the host (see run)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return self.run(x, y, lam)

    def _autocast(self, enabled: bool = True):
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=enabled and self.amp_dtype is not None)

    def run(self, x: torch.Tensor, y: torch.Tensor, lam: torch.Tensor) -> StepStats:
        """The step on a given batch and λ: every width's passes, then one optimizer step."""
        model, stats, n = self.model, StepStats(), x.shape[0]
        model.train()
        self.optimizer.zero_grad(set_to_none=True)
        # Which samples take the clean / adversarial pass is decided on the host: the model gets
        # host-side λ too, so neither asks the GPU anything (no device syncs inside the step).
        lam_host = lam.detach().cpu()
        clean_host = (lam_host < 1).nonzero(as_tuple=True)[0] if self.cfg.clean_pass == "weighted" else torch.arange(n)
        adv_host = (lam_host > 0).nonzero(as_tuple=True)[0]
        clean = _Part(x, y, lam_host, clean_host, 1 - lam_host[clean_host])
        adv = _Part(x, y, lam_host, adv_host, lam_host[adv_host])
        # PGD random starts: a CPU generator of this step (the attack moves the noise to x's device).
        attack_gen = torch.Generator().manual_seed(int(torch.randint(2**62, (1,))))
        for i, width in enumerate(self.train_widths):
            model.set_width(width)
            x_adv = self._attack(adv, attack_gen) if adv.idx.numel() else None
            out_c, out_a, loss = self._passes(clean, adv, x_adv, n)
            self.scaler.scale(loss).backward()
            stats.loss += float(loss.detach())
            if i == 0:
                _count(stats, out_c, clean.y, "clean")
                _count(stats, out_a, adv.y, "adv")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        model.set_width(self.train_widths[0])
        return stats

    def _attack(self, adv: "_Part", generator: torch.Generator) -> torch.Tensor:
        # fp16 input gradients can underflow to 0 (and sign(0) = 0): attack in fp32 then.
        with self._autocast(enabled=self.amp_dtype == torch.bfloat16):
            # FiLMCached: the attack's passes share one set of FiLM γ/β (no weight
            # update in between), instead of running the generators at every step.
            return self.attack(FiLMCached.wrap(self.model), adv.x, adv.y, adv.lam, generator=generator).detach()

    def _passes(self, clean: "_Part", adv: "_Part", x_adv, n: int):
        with self._autocast():
            out_c, out_a = self.step_module(
                # λ as numpy: DDP moves tensor arguments to the GPU, which the model would
                # only copy back (a sync per pass).
                clean.x if clean.idx.numel() else None, clean.lam.numpy(), x_adv, adv.lam.numpy()
            )
            loss = clean.x.new_zeros(())  # x's dtype and device, even when no sample is clean
            if out_c is not None:
                loss = loss + (clean.w * F.cross_entropy(out_c.float(), clean.y, reduction="none")).sum()
            if out_a is not None:
                loss = loss + (adv.w * F.cross_entropy(out_a.float(), adv.y, reduction="none")).sum()
            return out_c, out_a, loss / n


class _Part:
    """The samples of a batch that take one pass (clean or adversarial): their images, labels,
    host-side λ and loss weights (on the device)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, lam_host: torch.Tensor, idx_host: torch.Tensor,
                 weight: torch.Tensor):
        self.idx = idx_host.to(x.device)
        self.x, self.y, self.lam = x[self.idx], y[self.idx], lam_host[idx_host]
        self.w = weight.to(x.device)


def _count(stats: StepStats, out, y: torch.Tensor, which: str) -> None:
    if out is None:
        return
    setattr(stats, f"{which}_correct", getattr(stats, f"{which}_correct") + int((out.argmax(1) == y).sum()))
    setattr(stats, f"{which}_seen", getattr(stats, f"{which}_seen") + int(y.numel()))


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


def _amp_dtype(amp: str, device: torch.device):
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "bf16" or (amp == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16
