"""Datasets for training and evaluation, read from the official files without torchvision.

Every dataset yields images as float32 ``[C, H, W]`` in [0, 1] (normalisation lives inside the
model) and int64 labels in ``0 .. num_classes-1``. Each dataset is a ``DatasetSpec``
(spec.py) listed in registry.py:

| name            | module      | files                                                    |
|-----------------|-------------|----------------------------------------------------------|
| ``digits``      | digits.py   | none: scikit-learn's ``load_digits``                     |
| ``cifar10``     | cifar10.py  | the "CIFAR-10 python version" batches                    |
| ``svhn``        | svhn.py     | ``train_32x32.mat`` / ``test_32x32.mat``                 |
| ``stl10``       | stl10.py    | ``stl10_binary/*_X.bin`` / ``*_y.bin``                   |
| ``folder:PATH`` | own.py      | ``PATH/<class>/<image>.png|jpg`` (a team's own images)   |
| ``npz:PATH``    | own.py      | an ``.npz`` with arrays ``x``, ``y``                     |

``--data-dir`` may point at the folder that holds the files, or at a subfolder named after the
dataset (``DIR/cifar10/...``). Batching (batching.py) is deterministic. torch is imported
lazily: ``dataset_info`` works without it.
"""

from __future__ import annotations

from typing import Optional

from oat_edge.training.datasets.batching import EpochLoader, epoch_batches, epoch_seed, make_loader
from oat_edge.training.datasets.digits import digits_split
from oat_edge.training.datasets.imageset import make_dataset
from oat_edge.training.datasets.registry import DATASETS, get_spec

__all__ = [
    "DATASETS", "EpochLoader", "builtin_preprocessing", "dataset_info", "dataset_options", "digits_split",
    "epoch_batches", "epoch_seed", "eval_split", "get_spec", "load_dataset", "make_dataset", "make_loader",
    "static_info",
]


def dataset_info(name: str, options=None) -> dict:
    """Facts about a dataset: name, num_classes, input_shape [C, H, W], mean, std,
    default_arch, attack defaults (eps, step_size, steps), splits, sizes, files, augment, split.

    An own dataset (``folder:PATH`` / ``npz:PATH``) is read to answer: ``options`` (image_size,
    val_fraction, split_seed, workers) decide its shape, split and statistics; it adds
    class_names, preprocessing, options and source."""
    return get_spec(name).info(str(name), options)


def static_info(name: str) -> dict:
    """The facts that need no data: attack defaults, architecture, augmentation, splits."""
    return get_spec(name).static_info(str(name))


def builtin_preprocessing(name: str) -> dict:
    """The raw → model-input contract of a dataset of fixed size (docs/bundle.md)."""
    return get_spec(name).preprocessing(str(name))


def eval_split(name: str) -> str:
    """The held-out split evaluation uses: "test", or "val" for datasets without a test split."""
    return get_spec(name).eval_split


def dataset_options(meta) -> Optional[dict]:
    """The own-dataset options a checkpoint's ``dataset`` record stores (None for built-ins)."""
    return (meta or {}).get("options") if isinstance(meta, dict) else None


def load_dataset(name: str, split: str = "train", data_dir=None, options=None):
    """Load one split of a dataset as an ImageDataset (a ``TensorDataset``).

    ``split``: "train", "test", or "val" where the dataset has one. Unknown datasets/splits and
    missing or malformed files raise ConfigError naming the file that was expected and where."""
    spec = get_spec(name)
    key = spec.key(str(name))
    images, labels = spec.load(key, split, data_dir, options)
    return make_dataset(images, labels, key, split)
