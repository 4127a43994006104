from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from oat_edge.layers.cond import Cond
from oat_edge.layers.dual_bn import DualBatchNorm2d
from oat_edge.layers.film import FiLM


class NormFiLM(nn.Module):
    """Dual BN followed (where the architecture conditions) by FiLM — the unit every
    backbone repeats. ``film=False`` gives a plain dual BN (shortcut BNs, WRN's last BN,
    and the whole network for the unconditioned baselines)."""

    def __init__(self, channels: int, widths: Sequence[float], code_dim: int, film: bool, dual_bn: bool):
        super().__init__()
        self.bn = DualBatchNorm2d(channels, widths, dual=dual_bn)
        self.film = FiLM(channels, widths, code_dim) if film else None

    def forward(self, x: torch.Tensor, cond: Cond) -> torch.Tensor:
        x = self.bn(x, cond.adv)
        return x if self.film is None else self.film(x, cond)
