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
    """What both slimmable layers share; a subclass names its full sizes (``_in_size`` /
    ``_out_size``: the attributes of its torch base class) and calls ``_set_widths``."""

    _in_size: str
    _out_size: str

    def _set_widths(self, widths: Sequence[float], slim_in: bool, slim_out: bool) -> None:
        self.widths = tuple(float(w) for w in widths)
        self.width_idx = len(self.widths) - 1
        self.slim_in, self.slim_out = slim_in, slim_out

    def _active(self, channels: int, slim: bool) -> int:
        return slim_channels(channels, self.widths[self.width_idx]) if slim else channels

    @property
    def in_active(self) -> int:
        return self._active(getattr(self, self._in_size), self.slim_in)

    @property
    def out_active(self) -> int:
        return self._active(getattr(self, self._out_size), self.slim_out)

    def active_weight(self):
        """(weight, bias) of the current width: views into the full-width parameters, or the
        parameters themselves when nothing is cut off (a slice's backward would zero-pad and
        copy the whole gradient for nothing)."""
        out_c, in_c = self.out_active, self.in_active
        if out_c == getattr(self, self._out_size) and in_c == getattr(self, self._in_size):
            return self.weight, self.bias
        w = self.weight[:out_c, :in_c]
        b = None if self.bias is None else self.bias[:out_c]
        return w, b


class SlimmableConv2d(nn.Conv2d, _Slimmable):
    _in_size, _out_size = "in_channels", "out_channels"

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
        self._set_widths(widths, slim_in, slim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.active_weight()
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)


class SlimmableLinear(nn.Linear, _Slimmable):
    _in_size, _out_size = "in_features", "out_features"

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
        self._set_widths(widths, slim_in, slim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.active_weight()
        return F.linear(x, w, b)
