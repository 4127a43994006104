"""``cifar10`` — the "CIFAR-10 python version": ``cifar-10-batches-py/data_batch_1..5`` and
``test_batch``. These are pickles, so they are read with an unpickler that admits only the
globals numpy needs to rebuild a plain array (never ``pickle.load`` on a downloaded file). As in
the reference OAT code, the last 5000 training images are the ``val`` split and ``train`` is
the first 45000.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Tuple

import numpy as np

from oat_edge.errors import ConfigError
from oat_edge.normalization import CIFAR_MEAN, CIFAR_STD
from oat_edge.training.datasets.spec import PAPER_ATTACK, PAPER_RECIPE, VAL_SIZE, FileSpec, train_val


class Cifar10Spec(FileSpec):
    name = "cifar10"
    facts = {
        "num_classes": 10,
        "input_shape": [3, 32, 32],
        "mean": list(CIFAR_MEAN),
        "std": list(CIFAR_STD),
        "default_arch": "resnet34",
        **PAPER_ATTACK,
        "splits": ("train", "val", "test"),
        "sizes": {"train": 45000, "val": 5000, "test": 10000},
        "augment": "random crop 32 with 4-pixel zero padding + random horizontal flip",
    }
    recipe = {**PAPER_RECIPE, "epochs": 200}
    files = ("cifar-10-batches-py/data_batch_1..5 and cifar-10-batches-py/test_batch "
             "(the 'CIFAR-10 python version' archive, extracted)")
    split = f"official train/test; val = last {VAL_SIZE} official training images, train = the rest"
    class_names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    crop_pad, flip = 4, True

    def read(self, root: Path, split: str):
        if split == "test":
            return read_cifar_batch(self.find(root, "cifar-10-batches-py/test_batch"))
        parts = [read_cifar_batch(self.find(root, f"cifar-10-batches-py/data_batch_{i}")) for i in range(1, 6)]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        return train_val(images, labels, split)


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Rebuilds dicts, lists, strings, numbers and plain numpy arrays — nothing else. Any other
    global (a class, ``os.system``, ...) in the stream is refused before it is looked up, so a
    crafted file cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        if name == "_reconstruct":
            return _numpy_reconstruct()
        if module == "_codecs":
            import codecs

            return codecs.encode
        return getattr(np, name)


def read_cifar_batch(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch -> (uint8 [N, 3, 32, 32], int64 [N])."""
    try:
        with open(path, "rb") as f:
            obj = _ArrayOnlyUnpickler(io.BufferedReader(f), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise ConfigError(f"{path} is not a CIFAR-10 python batch: {e}") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{path} is not a CIFAR-10 python batch (holds {type(obj).__name__}, not a dict)")
    data = obj.get(b"data", obj.get("data"))
    labels = obj.get(b"labels", obj.get("labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ConfigError(f"{path}: b'data' must be a uint8 array [N, 3072]")
    labels = np.asarray(labels if labels is not None else [], dtype=np.int64)
    if labels.shape != (data.shape[0],):
        raise ConfigError(f"{path}: {labels.size} labels for {data.shape[0]} images")
    # Rows are 1024 red, then 1024 green, then 1024 blue values, each 32×32 row-major.
    return data.reshape(-1, 3, 32, 32), labels


SPEC = Cifar10Spec()
