"""The datasets training knows. Adding one: a module with a ``DatasetSpec`` (see spec.py and
digits.py) and its line below."""

from __future__ import annotations

from typing import Optional

from oat_edge.errors import ConfigError
from oat_edge.training.datasets import cifar10, digits, own, stl10, svhn
from oat_edge.training.datasets.spec import DatasetSpec

SPECS = (
    digits.SPEC,
    cifar10.SPEC,
    svhn.SPEC,
    stl10.SPEC,
    own.FOLDER,
    own.NPZ,
)

DATASETS = tuple(s.name for s in SPECS if not s.prefix)  # the built-in datasets, by name
PREFIXES = tuple(f"{s.name}:PATH" for s in SPECS if s.prefix)


def find_spec(name) -> Optional[DatasetSpec]:
    """The spec of a dataset name, or None for an unknown name."""
    if not isinstance(name, str):
        return None
    return next((s for s in SPECS if s.matches(name)), None)


def get_spec(name) -> DatasetSpec:
    """The spec of a dataset name; ConfigError naming the known ones otherwise."""
    spec = find_spec(name)
    if spec is None:
        raise ConfigError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}, {' or '.join(PREFIXES)}")
    spec.key(name)  # folder:/npz: without a path
    return spec
