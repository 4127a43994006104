"""The attack base class: everything every attack shares (torchattacks' habit).

The base owns what must be the same for every attack — input checks, the ε-ball ∩ [0, 1]
projection, putting the model in eval mode for the attack and restoring each module's
train/eval flag afterwards, taking gradients with respect to the input only (nothing lands in
the parameters' ``.grad``) — and each attack class owns only its update rule (``perturb``).

An attack runs at a fixed (λ, width): the width is the model's current one, λ is one float or
one value per sample (OAT attacks each training sample at its own λ).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

from oat_edge.errors import ConfigError, InputError


class Attack:
    """An L∞ attack on images in [0, 1]: ``attack(model, x, y, lam, generator=None) -> x_adv``.

    Subclasses set ``name`` and implement ``perturb(forward, x, y, lo, hi, generator)``, where
    ``forward(z)`` returns the logits of the attacked mode and [lo, hi] is the box the result
    must stay in (the ε-ball around x intersected with [0, 1]). An attack that works on a subset
    of the images calls ``forward(z, idx)`` with their indices, so that per-sample λ follows them.
    """

    name = "attack"

    def __init__(self, eps: float):
        _check_number(self.name, "eps", eps)
        if eps > 1:
            raise ConfigError(f"attack {self.name}: eps is in units of the [0, 1] image range and must be ≤ 1, got {eps}")
        self.eps = float(eps)

    # --- what an attack says about itself (eval JSON, bundle calibration) --------------------
    def describe(self) -> dict:
        return {"name": self.name, "eps": self.eps}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.describe().items())})"

    # --- running it -----------------------------------------------------------------------
    def __call__(self, model, x, y, lam=None, generator=None):
        import torch

        _check_images(x)
        if not isinstance(y, torch.Tensor) or y.shape != x.shape[:1]:
            raise InputError(f"labels have shape {list(getattr(y, 'shape', []))}, expected [{x.shape[0]}]")
        flags = [(m, m.training) for m in model.modules()]
        model.eval()  # BN uses running statistics and does not update them; dropout off
        try:
            with torch.enable_grad():
                x = x.detach()
                lo, hi = (x - self.eps).clamp(min=0.0), (x + self.eps).clamp(max=1.0)
                x_adv = self.perturb(_mode_forward(model, lam), x, y, lo, hi, generator)
        finally:
            for m, was_training in flags:
                m.training = was_training
        return x_adv.detach()

    def perturb(self, forward: Callable, x, y, lo, hi, generator):  # pragma: no cover - abstract
        raise NotImplementedError


# --- helpers shared by the attacks ----------------------------------------------------------


def _mode_forward(model, lam):
    """``forward(z, idx=None)``: the model at λ; with ``idx``, at the λ of those images only
    (one λ for all, or one per sample: a tensor, array or list)."""
    per_sample = lam is not None and not isinstance(lam, (float, int)) and getattr(lam, "ndim", 1) > 0

    def forward(z, idx=None):
        if idx is None or not per_sample:
            return model(z, lam)
        if isinstance(lam, (list, tuple)):
            return model(z, [lam[i] for i in idx.tolist()])
        if hasattr(lam, "device"):  # a tensor: index on its own device
            return model(z, lam[idx.to(lam.device)])
        return model(z, lam[idx.cpu().numpy()])

    return forward


def project(x_adv, lo, hi):
    """Onto the ε-ball around the clean image, within [0, 1] (lo/hi already combine both)."""
    import torch

    return torch.max(torch.min(x_adv, hi), lo)


def uniform_start(x, eps: float, lo, hi, generator):
    """x plus uniform noise in [-ε, ε], projected. The noise is drawn on the generator's device
    (a CPU generator works for CUDA inputs too), so a seeded run is reproducible anywhere."""
    import torch

    device = generator.device if generator is not None else x.device
    noise = torch.rand(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)
    return project(x + (2.0 * noise - 1.0) * eps, lo, hi)


def input_grad(loss, x):
    import torch

    (grad,) = torch.autograd.grad(loss, x)
    return grad


def _check_number(attack: str, label: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"attack {attack}: {label} must be a finite number ≥ 0, got {value!r}")


def _check_count(attack: str, label: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"attack {attack}: {label} must be an integer ≥ {minimum}, got {value!r}")
    return int(value)


def _check_images(x) -> None:
    import torch

    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 4:
        raise InputError(f"an attack needs a float image batch [B, C, H, W], got {getattr(x, 'shape', type(x))}")
    if x.numel() and (not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1):
        raise InputError("attack inputs must be finite and in [0, 1] (normalisation is inside the model)")
