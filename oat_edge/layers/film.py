"""Feature-wise linear modulation conditioned on the λ code: h ← γ(λ)·h + β(λ) per channel.

Generator, as in the reference implementation: Linear(d → 2C) → LeakyReLU → Linear(2C → 2C),
split into γ (first C) and β (last C), LeakyReLU applied to both, no 1+γ form, PyTorch's
default initialisation, negative slope 0.01.

Under slimming the reference keeps ONE generator per site for all widths: at width w (C_w
active channels) it uses the first 2·C_w rows of the first layer and the top-left 2·C_w × 2·C_w
block of the second, so γ = the first C_w outputs and β = the next C_w. ``shared=False`` gives
one full generator per width instead (an option, not the reference).

``init="identity"`` (an option) keeps the default weights but starts the γ half of the last
layer's bias at 1 and the β half at 0: an untrained FiLM is then γ = 1 + a λ-dependent term
instead of a λ-dependent term alone, which with the reference's γ near 0 multiplies the signal
by a small number at every site.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from oat_edge.errors import ConfigError
from oat_edge.layers.cond import Cond
from oat_edge.layers.slimmable import slim_channels

FILM_SLOPE = 0.01  # LeakyReLU negative slope (the reference's); recorded in bundles
FILM_INITS = ("default", "identity")


class FiLMGenerator(nn.Module):
    """The two-layer MLP of one site, built at ``channels`` and usable at any C ≤ channels."""

    def __init__(self, code_dim: int, channels: int, slope: float = FILM_SLOPE, init: str = "default"):
        super().__init__()
        if init not in FILM_INITS:
            raise ConfigError(f"FiLM init must be one of {', '.join(FILM_INITS)}, got {init!r}")
        self.channels = channels
        self.slope = float(slope)
        self.fc1 = nn.Linear(code_dim, 2 * channels)
        self.fc2 = nn.Linear(2 * channels, 2 * channels)
        if init == "identity":
            with torch.no_grad():
                self.fc2.bias.zero_()
                self.fc2.bias[:channels].fill_(1.0)

    def weights(self, channels: int):
        """(fc1.weight, fc1.bias, fc2.weight, fc2.bias) of the sub-generator for C channels
        (views into the full parameters; the parameters themselves at full size, which spares
        the backward pass a zero-padded gradient per weight)."""
        if channels == self.channels:
            return self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias
        k = 2 * channels
        return self.fc1.weight[:k], self.fc1.bias[:k], self.fc2.weight[:k, :k], self.fc2.bias[:k]

    def joint(self, code: torch.Tensor, channels: int | None = None) -> torch.Tensor:
        """code [N, d] -> [γ | β] as one [N, 2C] tensor for C = ``channels`` (default: all)."""
        w1, b1, w2, b2 = self.weights(self.channels if channels is None else channels)
        return F.leaky_relu(F.linear(F.leaky_relu(F.linear(code, w1, b1), self.slope), w2, b2), self.slope)

    def forward(self, code: torch.Tensor, channels: int | None = None):
        """code [N, d] -> (γ [N, C], β [N, C]) for C = ``channels`` (default: all)."""
        c = self.channels if channels is None else channels
        out = self.joint(code, c)
        return out[:, :c], out[:, c:]


class FiLM(nn.Module):
    def __init__(self, num_features: int, widths: Sequence[float], code_dim: int, slope: float = FILM_SLOPE,
                 shared: bool = True, init: str = "default"):
        super().__init__()
        self.widths = tuple(float(w) for w in widths)
        self.width_idx = len(self.widths) - 1
        self.num_features = num_features
        self.shared = bool(shared)
        self.width_channels = [slim_channels(num_features, w) for w in self.widths]
        sizes = [num_features] if self.shared else self.width_channels
        self.generators = nn.ModuleList(FiLMGenerator(code_dim, c, slope, init) for c in sizes)
        # Offset of this site in the flat FiLM vector, per width, and its position among the
        # model's sites; set by OATModel.
        self.flat_offsets: list[int] = [0] * len(self.widths)
        self.site_index = 0

    @property
    def slope(self) -> float:
        return self.generators[0].slope

    def generator(self, width_idx: int | None = None) -> FiLMGenerator:
        i = self.width_idx if width_idx is None else width_idx
        return self.generators[0 if self.shared else i]

    def channels_at(self, width_idx: int | None = None) -> int:
        return self.width_channels[self.width_idx if width_idx is None else width_idx]

    @property
    def channels(self) -> int:
        return self.channels_at()

    def generator_weights(self, width_idx: int):
        """The MLP weights a width uses (what a bundle stores to compute off-grid λ exactly)."""
        return self.generator(width_idx).weights(self.channels_at(width_idx))

    def params(self, code: torch.Tensor, width_idx: int | None = None):
        """(γ, β) of this site at a width (the current one by default) for codes [N, d]."""
        return self.generator(width_idx)(code, self.channels_at(width_idx))

    def forward(self, x: torch.Tensor, cond: Cond) -> torch.Tensor:
        if cond.sites is not None:  # γ/β computed before the pass (OATModel.frozen_cond)
            gamma, beta = cond.sites[self.site_index]
            return x * gamma + beta
        c = self.channels
        if cond.film is not None:
            # Flat layout per site: [γ (C), β (C)], sites in model order (see OATModel.film_layout).
            off = self.flat_offsets[self.width_idx]
            gamma = cond.film[off : off + c].view(1, c, 1, 1)
            beta = cond.film[off + c : off + 2 * c].view(1, c, 1, 1)
            return x * gamma + beta
        out = self.generator().joint(cond.code, c)
        if cond.rows is not None:
            out = out[cond.rows]  # one gather for γ and β together
        gamma, beta = out.view(out.shape[0], 2 * c, 1, 1).split(c, dim=1)
        return x * gamma + beta
