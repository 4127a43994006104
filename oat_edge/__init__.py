"""oat-edge: deploy Once-for-All Adversarial Training (OAT/OATS) models on the edge.

``import oat_edge`` is deliberately light (numpy only): the runtime must work on a robot
without torch, TensorRT or CUDA. Stages live in sub-packages:

- ``oat_edge.training`` — datasets, attacks, OAT/OATS/PGD-AT/PGD-ATS trainers, evaluation
- ``oat_edge.export``   — checkpoint -> bundle (ONNX paths, FiLM tables, manifest, engines)
- ``oat_edge.runtime``  — ``Runtime(bundle).set_mode(lam, width)`` and its backends
"""

__version__ = "0.2.0"

from oat_edge.errors import (  # noqa: E402
    BundleError,
    CheckpointError,
    ConfigError,
    DeviceError,
    InputError,
    ModeError,
    OatEdgeError,
)
from oat_edge.mode import Mode  # noqa: E402

__all__ = [
    "__version__",
    "Mode",
    "OatEdgeError",
    "CheckpointError",
    "ConfigError",
    "BundleError",
    "ModeError",
    "InputError",
    "DeviceError",
]
