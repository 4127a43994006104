from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch


@dataclass
class Cond:
    """What one forward pass is conditioned on.

    code: λ codes, [U, d]: one per distinct λ of the batch (U ≤ |training set| in training), or
          [1, d] for one λ for the whole call.
    rows: [B] index of each sample's code in ``code`` (None: every sample uses code[0], or the
          codes are already per sample). FiLM generators run once per distinct λ, not per sample.
    adv:  route to BN_a: a bool for the whole call, or a bool tensor [B] per sample.
    film: a flat precomputed FiLM vector (export / runtime): when set, FiLM sites read their
          γ/β from it instead of running their generators, and ``code`` is unused.
    """

    code: Optional[torch.Tensor]
    adv: Union[bool, torch.Tensor]
    film: Optional[torch.Tensor] = None
    rows: Optional[torch.Tensor] = None
