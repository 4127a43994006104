"""Feature-wise linear modulation conditioned on the λ code: h ← γ(λ)·h + β(λ) per channel.

Generator (reference architecture): Linear(d → 2C) → LeakyReLU → Linear(2C → 2C) →
LeakyReLU, split into γ (first C) and β (last C). One generator per width, like the BNs.
We keep the reference form (no 1+γ) but start the last layer at γ ≈ 1, β ≈ 0, so an
untrained FiLM is the identity instead of a random rescaling.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from oat_edge.layers.cond import Cond
from oat_edge.layers.slimmable import slim_channels

FILM_SLOPE = 0.1  # LeakyReLU negative slope; recorded in bundles, runtime recomputes with it


class FiLMGenerator(nn.Module):
    def __init__(self, code_dim: int, channels: int, slope: float = FILM_SLOPE):
        super().__init__()
        self.channels = channels
        self.slope = slope
        self.fc1 = nn.Linear(code_dim, 2 * channels)
        self.fc2 = nn.Linear(2 * channels, 2 * channels)
        with torch.no_grad():
            self.fc2.weight.mul_(0.1)
            self.fc2.bias.zero_()
            self.fc2.bias[:channels].fill_(1.0)

    def forward(self, code: torch.Tensor):
        """code [N, d] -> (γ [N, C], β [N, C])."""
        h = F.leaky_relu(self.fc1(code), self.slope)
        out = F.leaky_relu(self.fc2(h), self.slope)
        return out[:, : self.channels], out[:, self.channels :]


class FiLM(nn.Module):
    def __init__(self, num_features: int, widths: Sequence[float], code_dim: int, slope: float = FILM_SLOPE):
        super().__init__()
        self.widths = tuple(float(w) for w in widths)
        self.width_idx = len(self.widths) - 1
        self.num_features = num_features
        self.generators = nn.ModuleList(
            FiLMGenerator(code_dim, slim_channels(num_features, w), slope) for w in self.widths
        )
        # Offset of this site in the flat FiLM vector, per width; set by OATModel.
        self.flat_offsets: list[int] = [0] * len(self.widths)

    @property
    def channels(self) -> int:
        return self.generators[self.width_idx].channels

    def params(self, code: torch.Tensor):
        """(γ, β) of this site at the current width for codes [N, d]."""
        return self.generators[self.width_idx](code)

    def forward(self, x: torch.Tensor, cond: Cond) -> torch.Tensor:
        if cond.film is not None:
            # Flat layout per site: [γ (C), β (C)], sites in model order (see OATModel.film_layout).
            c, off = self.channels, self.flat_offsets[self.width_idx]
            gamma = cond.film[off : off + c].view(1, c, 1, 1)
            beta = cond.film[off + c : off + 2 * c].view(1, c, 1, 1)
            return x * gamma + beta
        gamma, beta = self.params(cond.code)
        if cond.rows is not None:
            gamma, beta = gamma[cond.rows], beta[cond.rows]
        return x * gamma[:, :, None, None] + beta[:, :, None, None]
