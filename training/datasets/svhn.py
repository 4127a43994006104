"""``svhn`` — the cropped-digits ``train_32x32.mat`` / ``test_32x32.mat`` (X ``[32, 32, 3, N]``,
y ``[N, 1]`` with 10 meaning the digit 0). As in the reference, ``val`` is the last 5000
training images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Tuple

import numpy as np

from oat_edge.errors import ConfigError
from oat_edge.normalization import SVHN_MEAN, SVHN_STD
from oat_edge.training.datasets.spec import PAPER_ATTACK, PAPER_RECIPE, VAL_SIZE, FileSpec, train_val


class SvhnSpec(FileSpec):
    name = "svhn"
    facts = {
        "num_classes": 10,
        "input_shape": [3, 32, 32],
        "mean": list(SVHN_MEAN),
        "std": list(SVHN_STD),
        "default_arch": "wrn16_8",
        **PAPER_ATTACK,
        "splits": ("train", "val", "test"),
        "sizes": {"train": 68257, "val": 5000, "test": 26032},
        "augment": "none (as in the reference code; digits must not be flipped)",
    }
    recipe = {**PAPER_RECIPE, "epochs": 80, "lr": 0.01}  # lr 0.01: our choice from the paper's set
    files = "train_32x32.mat and test_32x32.mat (SVHN cropped digits, format 2)"
    split = f"official train/test; val = last {VAL_SIZE} official training images, train = the rest"
    class_names = [str(i) for i in range(10)]

    def read(self, root: Path, split: str):
        if split == "test":
            return read_svhn_mat(self.find(root, "test_32x32.mat"))
        images, labels = read_svhn_mat(self.find(root, "train_32x32.mat"))
        return train_val(images, labels, split)


def read_svhn_mat(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    """An SVHN ``*_32x32.mat`` -> (uint8 [N, 3, 32, 32], int64 [N]) with label 10 -> 0."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as e:  # scipy raises several unrelated types for a bad file
        raise ConfigError(f"{path} is not a readable SVHN .mat file: {e}") from None
    x, y = mat.get("X"), mat.get("y")
    if x is None or y is None or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise ConfigError(f"{path}: expected X [32, 32, 3, N] and y [N, 1]")
    labels = np.asarray(y, dtype=np.int64).reshape(-1)
    if labels.size != x.shape[3]:
        raise ConfigError(f"{path}: {labels.size} labels for {x.shape[3]} images")
    if labels.size and (labels.min() < 1 or labels.max() > 10):
        raise ConfigError(f"{path}: SVHN labels must be 1..10 (10 = digit 0)")
    labels[labels == 10] = 0
    # X[row, col, channel, n] -> [n, channel, row, col]
    return np.ascontiguousarray(np.transpose(x, (3, 2, 0, 1))).astype(np.uint8), labels


SPEC = SvhnSpec()
