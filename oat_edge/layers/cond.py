from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple, Union

import numpy as np
import torch


@dataclass(frozen=True)
class Route:
    """A batch that mixes λ = 0 and λ > 0 samples: which rows go to BN_a and which to BN_c.

    Built once per forward pass from the host-side λ values, so the dual BN layers split the
    batch without asking the GPU anything (a per-layer ``adv.any()`` is one device sync per BN
    layer, which left OAT training launch-starved on a GPU)."""

    perm: torch.Tensor  # [B] int64 on the batch's device: the λ > 0 rows, then the λ = 0 rows
    inv: torch.Tensor  # [B] the inverse permutation (batch order from ``perm`` order)
    n_adv: int  # how many rows go to BN_a (the first n_adv of ``perm``)


@dataclass
class Cond:
    """What one forward pass is conditioned on.

    code: λ codes, [U, d]: one per distinct λ of the batch (U ≤ |training set| in training), or
          [1, d] for one λ for the whole call.
    rows: [B] index of each sample's code in ``code`` (None: every sample uses code[0], or the
          codes are already per sample). FiLM generators run once per distinct λ, not per sample.
    adv:  route to BN_a: a bool for the whole call, a ``Route`` for a mixed batch, or a bool
          tensor [B] per sample (callers that build their own Cond).
    film: a flat precomputed FiLM vector (export / runtime): when set, FiLM sites read their
          γ/β from it instead of running their generators, and ``code`` is unused.
    sites: precomputed (γ, β) per FiLM site, in site order, each [N, C, 1, 1] with N = 1 or the
          batch (``OATModel.frozen_cond``): a site then only multiplies and adds.
    """

    code: Optional[torch.Tensor]
    adv: Union[bool, Route, torch.Tensor]
    film: Optional[torch.Tensor] = None
    rows: Optional[torch.Tensor] = None
    sites: Optional[Tuple[Tuple[torch.Tensor, torch.Tensor], ...]] = None


def host_to_device(a: np.ndarray, device, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """A small host array on ``device``. To a GPU it goes through pinned memory without
    blocking: a plain copy from pageable memory waits for the GPU's queue to drain, and a
    training step makes these copies at every forward pass."""
    t = torch.from_numpy(np.ascontiguousarray(a))
    if dtype is not None:
        t = t.to(dtype)
    device = torch.device(device)
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def make_route(is_adv: np.ndarray, device) -> Route:
    """The Route of a mixed batch from host-side per-sample flags (True: BN_a)."""
    perm = np.concatenate([np.flatnonzero(is_adv), np.flatnonzero(~is_adv)])
    inv = np.argsort(perm, kind="stable")
    return Route(perm=host_to_device(perm, device), inv=host_to_device(inv, device), n_adv=int(is_adv.sum()))
