"""oat_edge.training — datasets, attacks, the OAT / OATS / PGD-AT / PGD-ATS trainers, evaluation.

``from oat_edge.training import TrainConfig, train`` is the Python entry point
(``train(TrainConfig(dataset="digits", method="oats", out="ckpt.pt"))``); the CLI is
``oat-edge train`` / ``oat-edge eval``. Importing this package does not import torch: the
names below are loaded on first use.
"""

_LAZY = {
    "TrainConfig": "oat_edge.training.config",
    "train": "oat_edge.training.trainers",
    "Trainer": "oat_edge.training.trainers",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'oat_edge.training' has no attribute {name!r}")
