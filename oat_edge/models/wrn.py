"""Pre-activation Wide ResNet with FiLM and dual BN (reference OAT WRN), slimmable.

FiLM follows each block's two BNs; the final BN is dual but not conditioned.
WRN-16-8 (SVHN in the paper): channels 16/128/256/512; WRN-40-2 (STL-10): 16/32/64/128.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from oat_edge.errors import ConfigError
from oat_edge.layers import Cond, Normalize, NormFiLM, SlimmableConv2d, SlimmableLinear
from oat_edge.models.base import CONDITIONING_KEYWORDS, ENCODING_KEYWORDS, FILM_KEYWORDS, INPUT_KEYWORDS, OATModel
from oat_edge.models.registry import ModelFamily, register_model
from oat_edge.normalization import STL_MEAN, STL_STD, SVHN_MEAN, SVHN_STD


class PreActBlock(nn.Module):
    def __init__(self, cin, cout, stride, widths, film, dual_bn, dropout):
        super().__init__()
        self.norm1 = NormFiLM(cin, widths, film, dual_bn)
        self.conv1 = SlimmableConv2d(cin, cout, 3, widths, stride=stride, padding=1)
        self.norm2 = NormFiLM(cout, widths, film, dual_bn)
        self.conv2 = SlimmableConv2d(cout, cout, 3, widths, stride=1, padding=1)
        self.dropout = dropout
        self.shortcut_conv = (
            None if (cin == cout and stride == 1) else SlimmableConv2d(cin, cout, 1, widths, stride=stride)
        )

    def forward(self, x: torch.Tensor, cond: Cond) -> torch.Tensor:
        act = F.relu(self.norm1(x, cond))
        # As in the reference WRN: a projecting shortcut takes the pre-activated input.
        short = x if self.shortcut_conv is None else self.shortcut_conv(act)
        out = F.relu(self.norm2(self.conv1(act), cond))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        return self.conv2(out) + short


class OATWideResNet(OATModel):
    """WRN-``depth``-``widen``; the other keywords are ``WRN_KEYWORDS``."""

    def __init__(self, depth: int, widen: int, *, num_classes: int, in_chans: int, mean: Sequence[float],
                 std: Sequence[float], dropout: float, **conditioning):
        super().__init__(**conditioning)
        spec, dual_bn = self.film_spec, self.dual_bn
        if (depth - 4) % 6 != 0:
            raise ConfigError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        channels = (16, 16 * widen, 32 * widen, 64 * widen)
        w = self.widths
        self.normalize = Normalize(mean, std)
        self.stem_conv = SlimmableConv2d(in_chans, channels[0], 3, w, padding=1, slim_in=False)
        layers, cin = [], channels[0]
        for stage in range(3):
            for b in range(n):
                stride = 2 if (stage > 0 and b == 0) else 1
                layers.append(PreActBlock(cin, channels[stage + 1], stride, w, spec, dual_bn, dropout))
                cin = channels[stage + 1]
        self.blocks = nn.ModuleList(layers)
        self.final_norm = NormFiLM(cin, w, None, dual_bn)
        self.classifier = SlimmableLinear(cin, num_classes, w)
        self._finish_init()

    def features(self, x: torch.Tensor, cond: Cond) -> torch.Tensor:
        x = self.stem_conv(self.normalize(x))
        for block in self.blocks:
            x = block(x, cond)
        x = F.relu(self.final_norm(x, cond))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))



# Every Wide ResNet's keywords, in the order checkpoints record them.
WRN_KEYWORDS = dict(**INPUT_KEYWORDS, **CONDITIONING_KEYWORDS, dropout=0.3, **FILM_KEYWORDS, **ENCODING_KEYWORDS)


WRN = ModelFamily(OATWideResNet, WRN_KEYWORDS, structure=("depth", "widen"))


@register_model(WRN, depth=16, widen=8, mean=SVHN_MEAN, std=SVHN_STD)
def wrn16_8(**kwargs) -> OATWideResNet:
    """WRN-16-8 (SVHN in the paper)."""


@register_model(WRN, depth=40, widen=2, mean=STL_MEAN, std=STL_STD)
def wrn40_2(**kwargs) -> OATWideResNet:
    """WRN-40-2 (STL-10 in the paper)."""
