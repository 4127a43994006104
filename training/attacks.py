"""L∞ attacks on images in [0, 1]: PGD-n, FGSM and MI-FGSM, run at a fixed (λ, width).

An attack uses the λ it is given (one float, or one value per sample — OAT attacks each
sample at its own λ) and the model's current width. While it runs every module is in eval
mode — batch norm uses its running statistics and does not update them, dropout is off — and
afterwards each module's train/eval flag is restored. Gradients are taken with
``torch.autograd.grad`` with respect to the input only, so nothing accumulates in the
parameters' ``.grad``. Every iterate is projected onto the ε-ball around the clean image and
clipped to [0, 1].

Names (``make_attack``): ``pgd<N>`` (``pgd7``, ``pgd20``, ...: N steps, random start),
``fgsm`` (one step of size ε from the clean image), ``mifgsm`` (Dong et al. 2018: 10 steps
of ε/10, momentum 1.0, gradients L1-normalised per sample, no random start). ε and the PGD step
size default to the dataset's (``dataset_info``); with no dataset, the paper's 8/255 and 2/255.
"""

from __future__ import annotations

import math
import re
from typing import Optional

from oat_edge.errors import ConfigError, InputError

PAPER_EPS = 8 / 255
PAPER_STEP = 2 / 255
MIFGSM_STEPS = 10
_PGD = re.compile(r"pgd(\d+)$")


class Attack:
    """An L∞ attack. ``attack(model, x, y, lam, generator=None) -> x_adv`` (detached)."""

    def __init__(self, name: str, eps: float, steps: int, step_size: float, random_start: bool, momentum: float = 0.0):
        for label, value in (("eps", eps), ("step_size", step_size), ("momentum", momentum)):
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"attack {name}: {label} must be a finite number ≥ 0, got {value!r}")
        if eps > 1:
            raise ConfigError(f"attack {name}: eps is in units of the [0, 1] image range and must be ≤ 1, got {eps}")
        if int(steps) < 1:
            raise ConfigError(f"attack {name}: steps must be ≥ 1, got {steps}")
        self.name = name
        self.eps = float(eps)
        self.steps = int(steps)
        self.step_size = float(step_size)
        self.random_start = bool(random_start)
        self.momentum = float(momentum)

    def describe(self) -> dict:
        d = {"name": self.name, "eps": self.eps, "steps": self.steps, "step_size": self.step_size,
             "random_start": self.random_start}
        if self.momentum:
            d["momentum"] = self.momentum
        return d

    def __repr__(self) -> str:
        return f"Attack({', '.join(f'{k}={v!r}' for k, v in self.describe().items())})"

    def __call__(self, model, x, y, lam=None, generator=None):
        import torch
        import torch.nn.functional as F

        _check_images(x)
        if y.shape != x.shape[:1]:
            raise InputError(f"labels have shape {list(y.shape)}, expected [{x.shape[0]}]")
        flags = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            with torch.enable_grad():
                x = x.detach()
                lo, hi = (x - self.eps).clamp_(min=0.0), (x + self.eps).clamp_(max=1.0)
                if self.random_start and self.eps > 0:
                    # Drawn on the generator's device (CPU generators work for CUDA inputs too).
                    noise = torch.rand(x.shape, generator=generator, device=_gen_device(generator, x), dtype=x.dtype)
                    x_adv = x + (2.0 * noise.to(x.device) - 1.0) * self.eps
                    x_adv = torch.max(torch.min(x_adv, hi), lo)
                else:
                    x_adv = x.clone()
                velocity = torch.zeros_like(x) if self.momentum else None
                for _ in range(self.steps):
                    x_adv.requires_grad_(True)
                    loss = F.cross_entropy(model(x_adv, lam), y, reduction="sum")
                    (grad,) = torch.autograd.grad(loss, x_adv)
                    if velocity is not None:
                        l1 = grad.abs().flatten(1).mean(1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
                        velocity = self.momentum * velocity + grad / l1
                        grad = velocity
                    x_adv = x_adv.detach() + self.step_size * grad.sign()
                    x_adv = torch.max(torch.min(x_adv, hi), lo)  # ε-ball ∩ [0, 1]
        finally:
            for m, was_training in flags:
                m.training = was_training
        return x_adv.detach()


def _gen_device(generator, x):
    return generator.device if generator is not None else x.device


def _check_images(x) -> None:
    import torch

    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 4:
        raise InputError(f"an attack needs a float image batch [B, C, H, W], got {getattr(x, 'shape', type(x))}")
    if x.numel() and (not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1):
        raise InputError("attack inputs must be finite and in [0, 1] (normalisation is inside the model)")


def attack_defaults(dataset=None) -> tuple:
    """(eps, step_size) for a dataset name or dataset object; the paper's values without one."""
    if dataset is None:
        return PAPER_EPS, PAPER_STEP
    from oat_edge.training.datasets import dataset_info

    name = dataset if isinstance(dataset, str) else getattr(dataset, "name", None)
    if name is None:
        raise ConfigError(f"cannot tell which dataset {dataset!r} is (pass its name)")
    info = dataset_info(name)
    return float(info["eps"]), float(info["step_size"])


def attack_names_help() -> str:
    return "pgd7, pgd20, pgd<N>, fgsm, mifgsm"


def make_attack(name: str, eps: Optional[float] = None, step_size: Optional[float] = None,
                steps: Optional[int] = None, dataset=None) -> Attack:
    """Build an attack by name; unset ε / step size come from ``dataset`` (name or object)."""
    if isinstance(name, Attack):
        return name
    key = str(name).lower().strip()
    d_eps, d_step = attack_defaults(dataset)
    # A custom ε keeps the dataset's step/ε ratio (1/4 everywhere: 2/255 of 8/255).
    d_step = d_step if eps is None else float(eps) * d_step / d_eps
    eps = d_eps if eps is None else eps
    match = _PGD.match(key)
    if match:
        n = int(match.group(1)) if steps is None else int(steps)
        if n < 1:
            raise ConfigError(f"attack {name!r}: PGD needs at least one step")
        return Attack(key, eps, n, d_step if step_size is None else step_size, random_start=True)
    if key == "fgsm":
        return Attack(key, eps, 1 if steps is None else steps, eps if step_size is None else step_size, random_start=False)
    if key == "mifgsm":
        n = MIFGSM_STEPS if steps is None else int(steps)
        if n < 1:
            raise ConfigError("attack 'mifgsm' needs at least one step")
        return Attack(key, eps, n, eps / n if step_size is None else step_size, random_start=False, momentum=1.0)
    raise ConfigError(f"unknown attack {name!r}; known: {attack_names_help()}")
