"""Input-gradient saliency of a model at a mode (λ, width), and how well it aligns with the image
(the OAT paper's Figs. 10–12 and the number behind them).

- ``saliency_maps``: ∇x of the cross-entropy at the true label, per image — the "Jacobian
  saliency" the OAT paper shows across λ (robust modes give maps that look like the digit).
- ``gradient_alignment``: the alignment of Etmann et al. (2019, "On the connection between
  adversarial robustness and saliency map interpretability"), mean over images.
- ``plot_saliency``: a PNG grid, one row per λ, one column per image.

Gradients are taken with respect to the image in [0, 1] (the model normalises inside), with the
model in eval mode at (λ, width); its previous mode and train/eval state are restored after.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from oat_edge.errors import ConfigError
from oat_edge.fileio import atomic_path


@contextmanager
def _at_mode(model, lam: float, width: float):
    training, old = model.training, (model.lam, model.width)
    model.eval()
    model.set_mode(lam, width)
    try:
        yield model
    finally:
        model.set_mode(*old)
        model.train(training)


def _inputs(model, x, y):
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ConfigError(f"x must be an NCHW tensor, got {getattr(x, 'shape', type(x).__name__)}")
    y = torch.as_tensor(y).reshape(-1)
    if y.shape[0] != x.shape[0]:
        raise ConfigError(f"got {y.shape[0]} labels for {x.shape[0]} images")
    device = next(model.parameters()).device
    return x.detach().to(device, torch.float32).clone().requires_grad_(True), y.to(device, torch.long)


def saliency_maps(model, x: torch.Tensor, y, lam: float, width: float = 1.0) -> torch.Tensor:
    """∇x CE(model(x), y) per image, [N, C, H, W] (detached, on x's device), at (λ, width) in eval
    mode. Each image's map is the gradient of its own loss (eval-mode BN: samples independent)."""
    xg, y = _inputs(model, x, y)
    with _at_mode(model, lam, width):
        loss = F.cross_entropy(model(xg), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, xg)
    return grad.detach().to(x.device)


def gradient_alignment(model, x: torch.Tensor, y, lam: float, width: float = 1.0, normalized: bool = False) -> float:
    """Mean over images of Etmann et al.'s alignment between an image and its saliency map:

        α(x) = |⟨x, g⟩| / ‖g‖,   g = ∇x Ψ_y(x),

    Ψ_y the logit of the image's class y (Etmann et al. take the predicted class F(x); for
    correctly classified images the two coincide, and the true label keeps the number defined
    the same way as ``saliency_maps``). α is the length of x's projection on the gradient
    direction; for a linear model Ψ_y(x) = ⟨w_y, x⟩ + b it is |⟨x, w_y⟩| / ‖w_y‖. With
    ``normalized=True`` it is divided by ‖x‖: |cos ∠(x, g)|, in [0, 1], which does not grow with
    the image's brightness. Images whose gradient is exactly zero count as 0.
    """
    xg, y = _inputs(model, x, y)
    with _at_mode(model, lam, width):
        logits = model(xg)
        (grad,) = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), xg)
    g = grad.detach().flatten(1).double()
    v = xg.detach().flatten(1).double()
    gnorm = g.norm(dim=1)
    scale = gnorm * (v.norm(dim=1) if normalized else 1.0)
    alpha = torch.where(scale > 0, (v * g).sum(dim=1).abs() / scale.clamp_min(1e-300), torch.zeros_like(scale))
    return float(alpha.mean())


def _display(m: np.ndarray) -> tuple[np.ndarray, dict]:
    """One map [C, H, W] as an image: one channel signed around 0 (blue < 0 < red), three as RGB
    with 0 at mid-grey; each map scaled by its own largest |value| (the pattern, not its size)."""
    peak = float(np.abs(m).max()) or 1.0
    if m.shape[0] == 3:
        return np.clip(0.5 + 0.5 * np.transpose(m, (1, 2, 0)) / peak, 0.0, 1.0), {}
    return m.mean(axis=0) / peak, {"cmap": "RdBu_r", "vmin": -1.0, "vmax": 1.0}


def plot_saliency(maps_by_lambda: Mapping[float, torch.Tensor], out_png, titles: Mapping[float, str] | None = None,
                  max_images: int = 8) -> Path:
    """A PNG grid: one row per λ (sorted), one column per image (the first ``max_images``);
    ``maps_by_lambda[λ]`` is a [N, C, H, W] tensor from ``saliency_maps`` (same images for every
    λ). ``titles`` optionally labels a row (e.g. "OAT λ=0.3, α=1.2"). Written atomically."""
    if not maps_by_lambda:
        raise ConfigError("no saliency maps to plot")
    rows = sorted(maps_by_lambda, key=float)
    arrays = {lam: torch.as_tensor(maps_by_lambda[lam]).detach().cpu().numpy() for lam in rows}
    for lam, a in arrays.items():
        if a.ndim != 4 or a.shape[1] not in (1, 3):
            raise ConfigError(f"saliency maps at λ={lam:g} must be [N, 1 or 3, H, W], got {list(a.shape)}")
    n = min(min(a.shape[0] for a in arrays.values()), int(max_images))
    if n < 1:
        raise ConfigError("the saliency maps hold no image")
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), n, figsize=(1.3 * n + 1.2, 1.3 * len(rows) + 0.3), squeeze=False)
    for r, lam in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            image, kw = _display(arrays[lam][c])
            ax.imshow(image, interpolation="nearest", **kw)
            ax.set_xticks([])
            ax.set_yticks([])
        label = (titles or {}).get(lam, f"λ = {float(lam):g}")
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle("∇x loss (red > 0 > blue, each map scaled to its own maximum)", fontsize=9)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out
