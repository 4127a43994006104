"""The dataset object training and evaluation iterate: image tensors, labels and the name of
the dataset they came from. torch is imported on first use."""

from __future__ import annotations

import numpy as np

_IMAGE_DATASET = None


def _tensor_dataset_class():
    import torch.utils.data

    class ImageDataset(torch.utils.data.TensorDataset):
        """A TensorDataset of (image float32 [C, H, W] in [0, 1], label int64) that also
        knows its dataset ``name`` (for augmentation and attack defaults) and ``split``."""

        def __init__(self, images, labels, name: str, split: str):
            super().__init__(images, labels)
            self.name = name
            self.split = split

        @property
        def images(self):
            return self.tensors[0]

        @property
        def labels(self):
            return self.tensors[1]

        @property
        def info(self) -> dict:
            from oat_edge.training.datasets.registry import get_spec

            return get_spec(self.name).static_info(self.name)

        def subset(self, n: int) -> "ImageDataset":
            """The first ``n`` images (deterministic, for quick evaluation)."""
            return ImageDataset(self.images[:n], self.labels[:n], self.name, self.split)

        def __repr__(self) -> str:
            return f"ImageDataset({self.name}/{self.split}, n={len(self)}, shape={list(self.images.shape[1:])})"

    return ImageDataset


def make_dataset(images: np.ndarray, labels: np.ndarray, name: str, split: str):
    """Wrap uint8/float arrays ``[N, C, H, W]`` (uint8 is divided by 255) as an ImageDataset."""
    global _IMAGE_DATASET
    import torch

    if _IMAGE_DATASET is None:
        _IMAGE_DATASET = _tensor_dataset_class()
    images = np.asarray(images)
    if images.dtype == np.uint8:
        x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    else:
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    y = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))
    return _IMAGE_DATASET(x, y, name, split)
