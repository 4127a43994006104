"""Backbones in a registry (timm's habits): ``create_model('resnet34', widths=(0.5, 1.0))``.

Registered names: ``resnet34`` (CIFAR-10), ``wrn16_8`` (SVHN), ``wrn40_2`` (STL-10) and
``resnet_tiny`` (scikit-learn digits, trains in minutes on a CPU).
"""

from oat_edge.models.base import OATModel
from oat_edge.models.registry import ModelFamily, create_model, get_model_defaults, list_models, register_model

# Importing the modules registers their architectures.
from oat_edge.models import resnet, wrn  # noqa: F401,E402

__all__ = ["OATModel", "ModelFamily", "create_model", "list_models", "register_model", "get_model_defaults"]
