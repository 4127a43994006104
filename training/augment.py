"""Train-time augmentation as batched tensor ops (no torchvision, no per-image Python loop).

The only augmentation the paper's reference code uses is "pad with zeros, take a random crop
of the original size" (a random shift) and a random horizontal flip. Each dataset's spec
(training/datasets/) sets its own:

==========  ==============================  =======================================
dataset     crop (zero padding)             flip
==========  ==============================  =======================================
cifar10     32×32, pad 4                    yes
stl10       96×96, pad 4 (reference code)   yes
svhn        none (reference code)           no (digits are not mirror-symmetric)
digits      8×8, pad 1 (shift ≤ 1 pixel)    no
==========  ==============================  =======================================

Random draws are separated from their application: ``sample_params`` draws the parameters of
N samples from a ``torch.Generator`` in a fixed order, ``apply_augment`` applies them. The
loader draws the parameters of a whole epoch at once, so an epoch is reproducible from its
seed alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, Sequence


if TYPE_CHECKING:  # annotations only: importing this module must not import torch
    import torch


@dataclass(frozen=True)
class AugmentSpec:
    pad: int = 0  # random crop of the original size from the image zero-padded by `pad`
    flip: bool = False  # random horizontal flip with probability 1/2

    @property
    def active(self) -> bool:
        return self.pad > 0 or self.flip


def sample_params(spec: AugmentSpec, n: int, image_hw: Sequence[int], generator) -> Dict[str, "torch.Tensor"]:
    """Draw the augmentation parameters of ``n`` samples: ``dy``, ``dx`` (crop offsets in
    0..2·pad) and ``flip`` (bool). Always drawn in this order, so the stream is stable."""
    import torch

    params = {}
    if spec.pad > 0:
        params["dy"] = torch.randint(0, 2 * spec.pad + 1, (n,), generator=generator)
        params["dx"] = torch.randint(0, 2 * spec.pad + 1, (n,), generator=generator)
    if spec.flip:
        params["flip"] = torch.rand(n, generator=generator) < 0.5
    return params


def apply_augment(x: "torch.Tensor", params: Dict[str, "torch.Tensor"], spec: AugmentSpec) -> "torch.Tensor":
    """Apply drawn parameters to a batch ``[B, C, H, W]`` (returns a new tensor)."""
    import torch
    import torch.nn.functional as F

    b, c, h, w = x.shape
    if spec.pad > 0:
        p = spec.pad
        padded = F.pad(x, (p, p, p, p))  # zeros
        rows = params["dy"].to(x.device)[:, None] + torch.arange(h, device=x.device)[None, :]  # [B, H]
        cols = params["dx"].to(x.device)[:, None] + torch.arange(w, device=x.device)[None, :]  # [B, W]
        bi = torch.arange(b, device=x.device)[:, None, None, None]
        ci = torch.arange(c, device=x.device)[None, :, None, None]
        x = padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]
    if spec.flip:
        flip = params["flip"].to(x.device)[:, None, None, None]
        x = torch.where(flip, x.flip(3), x)
    return x
