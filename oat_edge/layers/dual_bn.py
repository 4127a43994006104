"""Switchable dual batch norm: for every width a clean BN (BN_c, used for λ = 0) and an
adversarial BN (BN_a, used for λ > 0).

Training batches mix λ = 0 and λ > 0 samples, so routing is per sample: each BN sees (and
updates its running statistics from) only its own samples. In eval the route is usually one
bool for the whole call. With ``dual=False`` (the paper's normal-BN ablation) both routes use
the same BN.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import nn

from oat_edge.layers.cond import Route
from oat_edge.layers.slimmable import slim_channels


class DualBatchNorm2d(nn.Module):
    def __init__(self, num_features: int, widths: Sequence[float], dual: bool = True):
        super().__init__()
        self.widths = tuple(float(w) for w in widths)
        self.width_idx = len(self.widths) - 1
        self.num_features = num_features
        self.dual = dual
        self.bn_c = nn.ModuleList(nn.BatchNorm2d(slim_channels(num_features, w)) for w in self.widths)
        self.bn_a = (
            nn.ModuleList(nn.BatchNorm2d(slim_channels(num_features, w)) for w in self.widths) if dual else None
        )

    def branch(self, adv: bool, width_idx: int | None = None) -> nn.BatchNorm2d:
        """The BatchNorm2d a route uses at a width (the current width by default)."""
        i = self.width_idx if width_idx is None else width_idx
        if adv and self.dual:
            return self.bn_a[i]
        return self.bn_c[i]

    def forward(self, x: torch.Tensor, adv: Union[bool, Route, torch.Tensor]) -> torch.Tensor:
        if isinstance(adv, Route):  # decided on the host: no device sync here
            if not self.dual:
                return self.branch(True)(x)
            idx_a, idx_c = adv.idx_adv, adv.idx_clean
        elif isinstance(adv, torch.Tensor) and adv.dim() > 0:
            if not self.dual or bool(adv.all()):
                return self.branch(True)(x)
            if not bool(adv.any()):
                return self.branch(False)(x)
            idx_a = adv.nonzero(as_tuple=True)[0]
            idx_c = (~adv).nonzero(as_tuple=True)[0]
        else:
            return self.branch(bool(adv))(x)
        # Mixed batch: each BN normalises (and, in training, updates statistics from) its own
        # samples only; the results are scattered back into batch order.
        out_a = self.branch(True)(x.index_select(0, idx_a))
        out_c = self.branch(False)(x.index_select(0, idx_c))
        out = x.new_empty((x.shape[0],) + out_a.shape[1:])
        out = out.index_copy(0, idx_a, out_a)
        return out.index_copy(0, idx_c, out_c)
