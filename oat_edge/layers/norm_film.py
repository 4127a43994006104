from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import nn

from oat_edge.layers.cond import Cond
from oat_edge.layers.dual_bn import DualBatchNorm2d
from oat_edge.layers.film import FILM_SLOPE, FiLM


@dataclass(frozen=True)
class FiLMSpec:
    """How a network's FiLM sites are built (see ``oat_edge.layers.film``)."""

    code_dim: int
    slope: float = FILM_SLOPE
    shared: bool = True
    init: str = "default"


class NormFiLM(nn.Module):
    """Dual BN followed (where the architecture conditions) by FiLM — the unit every
    backbone repeats. ``film=None`` gives a plain dual BN (shortcut BNs, WRN's last BN,
    and the whole network for the unconditioned baselines)."""

    def __init__(self, channels: int, widths: Sequence[float], film: Optional[FiLMSpec], dual_bn: bool):
        super().__init__()
        self.bn = DualBatchNorm2d(channels, widths, dual=dual_bn)
        self.film = None if film is None else FiLM(channels, widths, film.code_dim, film.slope, film.shared, film.init)

    def forward(self, x: torch.Tensor, cond: Cond) -> torch.Tensor:
        x = self.bn(x, cond.adv)
        return x if self.film is None else self.film(x, cond)
