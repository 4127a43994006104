"""ResNet with FiLM and dual BN (reference OAT ResNet34 for CIFAR-10), slimmable.

FiLM follows the BN of the stem and of both convs of every basic block; the shortcut BN is
dual but not conditioned. CIFAR stem (3×3, stride 1, no max-pool), global average pool.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from oat_edge.layers import Cond, Normalize, NormFiLM, SlimmableConv2d, SlimmableLinear
from oat_edge.models.base import CONDITIONING_KEYWORDS, ENCODING_KEYWORDS, FILM_KEYWORDS, INPUT_KEYWORDS, OATModel
from oat_edge.models.registry import REQUIRED, ModelFamily, register_model
from oat_edge.normalization import CIFAR_MEAN, CIFAR_STD


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, widths, film, dual_bn: bool):
        super().__init__()
        self.conv1 = SlimmableConv2d(cin, cout, 3, widths, stride=stride, padding=1)
        self.norm1 = NormFiLM(cout, widths, film, dual_bn)
        self.conv2 = SlimmableConv2d(cout, cout, 3, widths, stride=1, padding=1)
        self.norm2 = NormFiLM(cout, widths, film, dual_bn)
        if stride != 1 or cin != cout:
            self.shortcut_conv = SlimmableConv2d(cin, cout, 1, widths, stride=stride)
            self.shortcut_norm = NormFiLM(cout, widths, None, dual_bn)
        else:
            self.shortcut_conv = None

    def forward(self, x: torch.Tensor, cond: Cond) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x), cond))
        out = self.norm2(self.conv2(out), cond)
        short = x if self.shortcut_conv is None else self.shortcut_norm(self.shortcut_conv(x), cond)
        return F.relu(out + short)


class OATResNet(OATModel):
    """``blocks`` per stage (None: one each) and ``channels`` per stage set the depth; the
    other keywords are ``RESNET_KEYWORDS``."""

    def __init__(self, blocks: Optional[Sequence[int]], channels: Sequence[int], *, num_classes: int,
                 in_chans: int, mean: Sequence[float], std: Sequence[float], **conditioning):
        super().__init__(**conditioning)
        channels = tuple(channels)
        blocks = (1,) * len(channels) if blocks is None else tuple(blocks)
        spec, dual_bn = self.film_spec, self.dual_bn
        w = self.widths
        self.normalize = Normalize(mean, std)
        self.stem_conv = SlimmableConv2d(in_chans, channels[0], 3, w, padding=1, slim_in=False)
        self.stem_norm = NormFiLM(channels[0], w, spec, dual_bn)
        layers, cin = [], channels[0]
        for stage, (n, cout) in enumerate(zip(blocks, channels)):
            for b in range(n):
                stride = 2 if (stage > 0 and b == 0) else 1
                layers.append(BasicBlock(cin, cout, stride, w, spec, dual_bn))
                cin = cout
        self.blocks = nn.ModuleList(layers)
        self.classifier = SlimmableLinear(cin, num_classes, w)
        self._finish_init()

    def features(self, x: torch.Tensor, cond: Cond) -> torch.Tensor:
        x = F.relu(self.stem_norm(self.stem_conv(self.normalize(x)), cond))
        for block in self.blocks:
            x = block(x, cond)
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# Every ResNet's keywords, in the order checkpoints record them; a variant that leaves its
# channels open takes ``channels`` too, recorded just before ``lambda_encoding``.
RESNET_KEYWORDS = dict(**INPUT_KEYWORDS, **CONDITIONING_KEYWORDS, **FILM_KEYWORDS, **ENCODING_KEYWORDS)
OPEN_RESNET_KEYWORDS = dict(**INPUT_KEYWORDS, **CONDITIONING_KEYWORDS, **FILM_KEYWORDS, channels=REQUIRED,
                            **ENCODING_KEYWORDS)


# A reference ResNet fixes its blocks and channels; an open one has one block per stage and
# takes its channels as a keyword.
RESNET = ModelFamily(OATResNet, RESNET_KEYWORDS, structure=("blocks", "channels"))
OPEN_RESNET = ModelFamily(OATResNet, OPEN_RESNET_KEYWORDS, fixed=dict(blocks=None))


@register_model(RESNET, blocks=(3, 4, 6, 3), channels=(64, 128, 256, 512), mean=CIFAR_MEAN, std=CIFAR_STD)
def resnet34(**kwargs) -> OATResNet:
    """ResNet-34 for 32×32 inputs (CIFAR-10 in the paper): [3, 4, 6, 3] blocks, 64–512 channels."""


@register_model(OPEN_RESNET, channels=(16, 32, 64), in_chans=1, mean=(0.5,), std=(0.5,))
def resnet_tiny(**kwargs) -> OATResNet:
    """A three-stage, one-block-per-stage ResNet for small images (scikit-learn digits):
    trains with OATS in minutes on two CPU cores."""
