from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch


@dataclass
class Cond:
    """What one forward pass is conditioned on.

    code: λ codes, [B, d] (one per sample, training) or [1, d] (one λ for the whole call).
    adv:  route to BN_a: a bool for the whole call, or a bool tensor [B] per sample.
    film: a flat precomputed FiLM vector (export / runtime): when set, FiLM sites read their
          γ/β from it instead of running their generators, and ``code`` is unused.
    """

    code: Optional[torch.Tensor]
    adv: Union[bool, torch.Tensor]
    film: Optional[torch.Tensor] = None
