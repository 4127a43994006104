"""Slimmable layers: at width w a layer uses the first ⌊c·w⌋ channels of its full-width weight
(Yu et al., Slimmable Networks). The image input channels and the class outputs never slim."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def slim_channels(channels: int, width: float) -> int:
    """⌊channels · width⌋, at least 1 (the small epsilon keeps 0.75·64 = 48, not 47)."""
    return max(1, int(math.floor(channels * float(width) + 1e-9)))


class _Slimmable:
    widths: tuple
    width_idx: int

    def _active(self, channels: int, slim: bool) -> int:
        return slim_channels(channels, self.widths[self.width_idx]) if slim else channels


class SlimmableConv2d(nn.Conv2d, _Slimmable):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        widths: Sequence[float],
        stride: int = 1,
        padding: int = 0,
        bias: bool = False,
        slim_in: bool = True,
        slim_out: bool = True,
    ):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)
        self.widths = tuple(float(w) for w in widths)
        self.width_idx = len(self.widths) - 1
        self.slim_in, self.slim_out = slim_in, slim_out

    @property
    def in_active(self) -> int:
        return self._active(self.in_channels, self.slim_in)

    @property
    def out_active(self) -> int:
        return self._active(self.out_channels, self.slim_out)

    def active_weight(self):
        """(weight, bias) of the current width: views into the full-width parameters."""
        w = self.weight[: self.out_active, : self.in_active]
        b = None if self.bias is None else self.bias[: self.out_active]
        return w, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.active_weight()
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)


class SlimmableLinear(nn.Linear, _Slimmable):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        widths: Sequence[float],
        bias: bool = True,
        slim_in: bool = True,
        slim_out: bool = False,
    ):
        super().__init__(in_features, out_features, bias=bias)
        self.widths = tuple(float(w) for w in widths)
        self.width_idx = len(self.widths) - 1
        self.slim_in, self.slim_out = slim_in, slim_out

    @property
    def in_active(self) -> int:
        return self._active(self.in_features, self.slim_in)

    @property
    def out_active(self) -> int:
        return self._active(self.out_features, self.slim_out)

    def active_weight(self):
        w = self.weight[: self.out_active, : self.in_active]
        b = None if self.bias is None else self.bias[: self.out_active]
        return w, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.active_weight()
        return F.linear(x, w, b)
