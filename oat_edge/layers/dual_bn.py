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

from oat_edge.layers.cond import Route, make_route
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
            route = adv
        elif isinstance(adv, torch.Tensor) and adv.dim() > 0:
            if not self.dual or bool(adv.all()):
                return self.branch(True)(x)
            if not bool(adv.any()):
                return self.branch(False)(x)
            route = make_route(adv.cpu().numpy(), adv.device)
        else:
            return self.branch(bool(adv))(x)
        # Mixed batch: each BN normalises (and, in training, updates statistics from) its own
        # samples only. Rows are gathered into [BN_a rows | BN_c rows], each BN runs on its
        # contiguous part, and the result is gathered back into batch order.
        parts = permute_rows(x, route.perm, route.inv).split([route.n_adv, x.shape[0] - route.n_adv])
        out = torch.cat([self.branch(True)(parts[0]), self.branch(False)(parts[1])])
        return permute_rows(out, route.inv, route.perm)


class _PermuteRows(torch.autograd.Function):
    """x[perm] whose backward is the gather grad[inv]: a permutation's gradient needs no
    scatter-add (index_select's own backward zero-fills and scatter-adds, serially on a CPU)."""

    @staticmethod
    def forward(ctx, x, perm, inv):
        ctx.save_for_backward(inv)
        return x.index_select(0, perm)

    @staticmethod
    def backward(ctx, grad):
        (inv,) = ctx.saved_tensors
        return grad.index_select(0, inv), None, None


def permute_rows(x: torch.Tensor, perm: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    """Rows of x in the order ``perm`` (``inv`` is its inverse)."""
    return _PermuteRows.apply(x, perm, inv)
