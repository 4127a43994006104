"""Building blocks of OAT/OATS networks (torch). Models are in ``oat_edge.models``.

Every layer whose shape depends on the width keeps one ``width_idx`` attribute, set for the
whole network by ``OATModel.set_width``; conditioning on λ travels through ``Cond``.
"""

from oat_edge.layers.cond import Cond
from oat_edge.layers.dual_bn import DualBatchNorm2d
from oat_edge.layers.film import FiLM, FiLMGenerator
from oat_edge.layers.norm_film import FiLMSpec, NormFiLM
from oat_edge.layers.normalize import Normalize
from oat_edge.layers.slimmable import SlimmableConv2d, SlimmableLinear, slim_channels

__all__ = [
    "Cond",
    "DualBatchNorm2d",
    "FiLM",
    "FiLMGenerator",
    "FiLMSpec",
    "NormFiLM",
    "Normalize",
    "SlimmableConv2d",
    "SlimmableLinear",
    "slim_channels",
]
