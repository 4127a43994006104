"""ResNet with FiLM and dual BN (reference OAT ResNet34 for CIFAR-10), slimmable.

FiLM follows the BN of the stem and of both convs of every basic block; the shortcut BN is
dual but not conditioned. CIFAR stem (3×3, stride 1, no max-pool), global average pool.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from oat_edge.lambda_code import DEFAULT_CODE_DIM, S1
from oat_edge.layers import Cond, FiLMSpec, Normalize, NormFiLM, SlimmableConv2d, SlimmableLinear
from oat_edge.layers.film import FILM_SLOPE
from oat_edge.models.base import OATModel
from oat_edge.models.registry import register_model
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
    def __init__(
        self,
        blocks: Sequence[int],
        channels: Sequence[int],
        num_classes: int,
        in_chans: int,
        mean: Sequence[float],
        std: Sequence[float],
        widths: Sequence[float],
        train_lambdas: Sequence[float],
        code_dim: int,
        code_seed: int,
        film: bool,
        dual_bn: bool,
        film_slope: float = FILM_SLOPE,
        film_shared: bool = True,
        film_init: str = "default",
        lambda_encoding: str = "ro",
    ):
        super().__init__(widths, train_lambdas, code_dim, code_seed, film, dual_bn, lambda_encoding)
        spec = FiLMSpec(self.code_dim, film_slope, film_shared, film_init) if film else None
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


@register_model
def resnet34(
    num_classes: int = 10,
    in_chans: int = 3,
    mean: Sequence[float] = CIFAR_MEAN,
    std: Sequence[float] = CIFAR_STD,
    widths: Sequence[float] = (0.5, 0.75, 1.0),
    train_lambdas: Sequence[float] = S1,
    code_dim: int = DEFAULT_CODE_DIM,
    code_seed: int = 0,
    film: bool = True,
    dual_bn: bool = True,
    film_slope: float = FILM_SLOPE,
    film_shared: bool = True,
    film_init: str = "default",
    lambda_encoding: str = "ro",
) -> OATResNet:
    """ResNet-34 for 32×32 inputs (CIFAR-10 in the paper): [3, 4, 6, 3] blocks, 64–512 channels."""
    return OATResNet(
        (3, 4, 6, 3), (64, 128, 256, 512), num_classes, in_chans, mean, std,
        widths, train_lambdas, code_dim, code_seed, film, dual_bn, film_slope, film_shared, film_init,
        lambda_encoding,
    )


@register_model
def resnet_tiny(
    num_classes: int = 10,
    in_chans: int = 1,
    mean: Sequence[float] = (0.5,),
    std: Sequence[float] = (0.5,),
    widths: Sequence[float] = (0.5, 0.75, 1.0),
    train_lambdas: Sequence[float] = S1,
    code_dim: int = DEFAULT_CODE_DIM,
    code_seed: int = 0,
    film: bool = True,
    dual_bn: bool = True,
    film_slope: float = FILM_SLOPE,
    film_shared: bool = True,
    film_init: str = "default",
    channels: Sequence[int] = (16, 32, 64),
    lambda_encoding: str = "ro",
) -> OATResNet:
    """A three-stage, one-block-per-stage ResNet for small images (scikit-learn digits):
    trains with OATS in minutes on two CPU cores."""
    return OATResNet(
        (1,) * len(channels), tuple(channels), num_classes, in_chans, mean, std,
        widths, train_lambdas, code_dim, code_seed, film, dual_bn, film_slope, film_shared, film_init,
        lambda_encoding,
    )
