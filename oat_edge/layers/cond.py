from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch


@dataclass(frozen=True)
class Route:
    """A batch that mixes λ = 0 and λ > 0 samples: which rows go to BN_a and which to BN_c.

    Built once per forward pass from the host-side λ values, so the dual BN layers split the
    batch without asking the GPU anything (a per-layer ``adv.any()`` is one device sync per BN
    layer, which left OAT training launch-starved on a GPU)."""

    idx_adv: torch.Tensor  # [A] int64, on the batch's device
    idx_clean: torch.Tensor  # [B - A]


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
    """

    code: Optional[torch.Tensor]
    adv: Union[bool, Route, torch.Tensor]
    film: Optional[torch.Tensor] = None
    rows: Optional[torch.Tensor] = None
