"""``stl10`` — ``stl10_binary/train_X.bin`` (uint8, each image 3×96×96 stored column-major),
``train_y.bin`` (labels 1..10), ``test_X.bin`` / ``test_y.bin``. The unlabeled split is not
used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Tuple

import numpy as np

from oat_edge.errors import ConfigError
from oat_edge.normalization import STL_MEAN, STL_STD
from oat_edge.training.datasets.spec import PAPER_ATTACK, PAPER_RECIPE, FileSpec


class Stl10Spec(FileSpec):
    name = "stl10"
    facts = {
        "num_classes": 10,
        "input_shape": [3, 96, 96],
        "mean": list(STL_MEAN),
        "std": list(STL_STD),
        "default_arch": "wrn40_2",
        **PAPER_ATTACK,
        "splits": ("train", "test"),
        "sizes": {"train": 5000, "test": 8000},
        "augment": "random crop 96 with 4-pixel zero padding + random horizontal flip",
    }
    recipe = {**PAPER_RECIPE, "batch_size": 64}  # batch 64 for the 96×96 images: our choice
    files = "stl10_binary/train_X.bin, train_y.bin, test_X.bin, test_y.bin (STL-10 binary archive, extracted)"
    class_names = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
    crop_pad, flip = 4, True

    def read(self, root: Path, split: str):
        return read_stl10(self.find(root, f"stl10_binary/{split}_X.bin"), self.find(root, f"stl10_binary/{split}_y.bin"))


def read_stl10(x_path: Path, y_path: Path) -> Tuple[np.ndarray, np.ndarray]:
    """STL-10 ``*_X.bin`` / ``*_y.bin`` -> (uint8 [N, 3, 96, 96], int64 [N]) with labels 1..10 -> 0..9."""
    raw = np.fromfile(x_path, dtype=np.uint8)
    per_image = 3 * 96 * 96
    if raw.size == 0 or raw.size % per_image:
        raise ConfigError(f"{x_path}: size {raw.size} bytes is not a whole number of 3×96×96 images")
    # Each channel is stored column-major: the file order is [n, channel, col, row].
    images = np.ascontiguousarray(raw.reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2))
    labels = np.fromfile(y_path, dtype=np.uint8).astype(np.int64)
    if labels.size != images.shape[0]:
        raise ConfigError(f"{y_path}: {labels.size} labels for {images.shape[0]} images in {x_path}")
    if labels.size and (labels.min() < 1 or labels.max() > 10):
        raise ConfigError(f"{y_path}: STL-10 labels must be 1..10")
    return images, labels - 1


SPEC = Stl10Spec()
