"""oat-edge: deploy Once-for-All Adversarial Training (OAT/OATS) models on the edge.

``import oat_edge`` is deliberately light (numpy only): the runtime must work on a robot
without torch, TensorRT or CUDA. Stages live in sub-packages:

- ``oat_edge.training`` — datasets, attacks, OAT/OATS/PGD-AT/PGD-ATS trainers, evaluation
- ``oat_edge.export``   — checkpoint -> bundle (ONNX paths, manifest, engines)
- ``oat_edge.runtime``  — ``Runtime(bundle).set_mode(lam, width)``, its backends, ``verify``
- ``oat_edge.bench``    — on-device benchmarks (``oat-edge bench``)

The core (this folder) holds what every stage shares: layers and models, the λ code, modes, the
checkpoint contract (``checkpoint``) and the bundle contract (``bundle``), machine probes
(``host``), the CLI and its shared options (``cliargs``). Stages import the core and earlier
stages only (tests/test_architecture.py).
"""

__version__ = "0.2.0"

from pathlib import Path as _Path  # noqa: E402

from oat_edge import _layout  # noqa: E402

_layout.install(_Path(__file__).resolve().parent)

from oat_edge.errors import (  # noqa: E402
    BundleError,
    CheckpointError,
    ConfigError,
    DependencyError,
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
    "DependencyError",
]
