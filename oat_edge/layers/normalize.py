from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    """(x - mean) / std inside the network, so that models, attacks, ONNX paths and the
    runtime all take images in [0, 1] (the ε-ball of an attack is defined there)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std
