"""Datasets for training and evaluation, read from the official files without torchvision.

Every dataset yields images as float32 ``[C, H, W]`` in [0, 1] (normalisation lives inside the
model) and int64 labels in ``0 .. num_classes-1``.

``digits`` — scikit-learn's ``load_digits`` (ships with scikit-learn, works offline): 1797
    grey 8×8 images with values 0..16, divided by 16. Kept at the native 8×8: ``resnet_tiny``
    (two stride-2 stages, global pooling) handles it, and upsampling would only multiply the
    compute without adding information. The split is fixed and independent of scikit-learn's
    splitters: per class (in label order) the indices of that class are permuted with
    ``numpy.random.Generator(PCG64(0))``; the class gets a test share of 360/1797 of its
    images, rounded by the largest-remainder rule so the test split has exactly 360 images
    (35–37 per class) and the train split 1437. ``digits_split()`` returns the indices.
``cifar10`` — the "CIFAR-10 python version": ``cifar-10-batches-py/data_batch_1..5`` and
    ``test_batch``. These are pickles, so they are read with an unpickler that admits only
    the globals numpy needs to rebuild a plain array (never ``pickle.load`` on a downloaded
    file). As in the reference OAT code, the last 5000 training images are the ``val`` split
    and ``train`` is the first 45000.
``svhn`` — the cropped-digits ``train_32x32.mat`` / ``test_32x32.mat`` (X ``[32, 32, 3, N]``,
    y ``[N, 1]`` with 10 meaning the digit 0). As in the reference, ``val`` is the last 5000
    training images.
``stl10`` — ``stl10_binary/train_X.bin`` (uint8, each image 3×96×96 stored column-major),
    ``train_y.bin`` (labels 1..10), ``test_X.bin`` / ``test_y.bin``. The unlabeled split is
    not used.

``folder:PATH`` / ``npz:PATH`` — a team's own labelled images (training/datasets/own.py): resized to
    ``--image-size``, a seeded stratified train/val split, mean/std of the train split.

``--data-dir`` may point at the folder that holds ``cifar-10-batches-py`` / ``stl10_binary``
/ the ``.mat`` files, or at a subfolder named after the dataset (``DIR/cifar10/...``).

Batching (``make_loader`` / ``epoch_batches``) is deterministic: the shuffle order and every
augmentation draw of epoch ``e`` are a pure function of ``(seed, e)`` — they never read the
global RNG — so a run resumed at epoch ``e`` sees exactly the batches an uninterrupted run
would. torch is imported lazily: ``dataset_info`` works without it.
"""

from __future__ import annotations

import io
import math
import pickle
from pathlib import Path
from typing import Iterator, Optional, Tuple

import numpy as np

from oat_edge.errors import ConfigError, DependencyError
from oat_edge.normalization import CIFAR_MEAN, CIFAR_STD, STL_MEAN, STL_STD, SVHN_MEAN, SVHN_STD

DATASETS = ("digits", "cifar10", "svhn", "stl10")
SPLITS = ("train", "val", "test")

# Attack defaults. CIFAR-10, SVHN and STL-10: L∞ ε = 8/255, 7 steps. The paper's text says steps
# of 2/255; the reference code steps min(1.25ε, ε + 4/255)/7 = 10/255/7 ≈ 1.43/255, and its
# published numbers come from that code, so the reference step is the default (the paper's is
# `--step-size paper`). Digits: see below.
REFERENCE_STEP = min(1.25 * 8 / 255, 8 / 255 + 4 / 255) / 7
_PAPER_ATTACK = {"eps": 8 / 255, "step_size": REFERENCE_STEP, "step_size_paper": 2 / 255, "steps": 7}
# Digits (8×8, 17 grey levels) need a larger ε to mean anything: ε = 0.25 with PGD steps of ε/4.
# At ε = 0.2 robustness is nearly free on digits (a PGD-AT model loses ~2 points of clean accuracy),
# so λ has nothing to trade; at 0.25 it costs ~4 points and a clean model keeps ~0 % robust
# accuracy, a real trade-off. Training at 0.25 grows ε over the first epochs (the recipe's
# eps_warmup), or pure adversarial training stalls. The sweeps: docs/robustness.md.
_INFO = {
    "digits": {
        "num_classes": 10,
        "input_shape": [1, 8, 8],
        # Per-channel statistics of the fixed 1437-image train split (values in [0, 1]).
        "mean": [0.3055],
        "std": [0.3761],
        "default_arch": "resnet_tiny",
        "eps": 0.25,
        "step_size": 0.0625,
        "steps": 10,
        "splits": ("train", "test"),
        "sizes": {"train": 1437, "test": 360},
        "augment": "random shift of up to 1 pixel (zero fill), no flip",
    },
    "cifar10": {
        "num_classes": 10,
        "input_shape": [3, 32, 32],
        "mean": list(CIFAR_MEAN),
        "std": list(CIFAR_STD),
        "default_arch": "resnet34",
        **_PAPER_ATTACK,
        "splits": SPLITS,
        "sizes": {"train": 45000, "val": 5000, "test": 10000},
        "augment": "random crop 32 with 4-pixel zero padding + random horizontal flip",
    },
    "svhn": {
        "num_classes": 10,
        "input_shape": [3, 32, 32],
        "mean": list(SVHN_MEAN),
        "std": list(SVHN_STD),
        "default_arch": "wrn16_8",
        **_PAPER_ATTACK,
        "splits": SPLITS,
        "sizes": {"train": 68257, "val": 5000, "test": 26032},
        "augment": "none (as in the reference code; digits must not be flipped)",
    },
    "stl10": {
        "num_classes": 10,
        "input_shape": [3, 96, 96],
        "mean": list(STL_MEAN),
        "std": list(STL_STD),
        "default_arch": "wrn40_2",
        **_PAPER_ATTACK,
        "splits": ("train", "test"),
        "sizes": {"train": 5000, "test": 8000},
        "augment": "random crop 96 with 4-pixel zero padding + random horizontal flip",
    },
}

_FILES = {
    "cifar10": "cifar-10-batches-py/data_batch_1..5 and cifar-10-batches-py/test_batch "
    "(the 'CIFAR-10 python version' archive, extracted)",
    "svhn": "train_32x32.mat and test_32x32.mat (SVHN cropped digits, format 2)",
    "stl10": "stl10_binary/train_X.bin, train_y.bin, test_X.bin, test_y.bin (STL-10 binary archive, extracted)",
    "digits": "nothing: scikit-learn's load_digits ships with scikit-learn",
}

VAL_SIZE = 5000  # held-out tail of the official train split (cifar10, svhn), as in the reference
DIGITS_TEST_SIZE = 360
DIGITS_SPLIT_SEED = 0


def _check_name(name) -> str:
    from oat_edge.training.datasets.own import parse_name

    if parse_name(name) is not None:
        return name
    key = str(name).lower().replace("-", "")
    if key not in _INFO:
        raise ConfigError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return key


def dataset_info(name: str, options=None) -> dict:
    """Facts about a dataset: name, num_classes, input_shape [C, H, W], mean, std,
    default_arch, attack defaults (eps, step_size, steps), splits, sizes, files, augment.

    An own dataset (``folder:PATH`` / ``npz:PATH``) is read to answer: ``options`` (image_size,
    val_fraction, split_seed, workers) decide its shape, split and statistics; it adds
    class_names, preprocessing, options and source."""
    key = _check_name(name)
    from oat_edge.training.datasets.own import is_own, load_own, own_info_static

    if is_own(key):
        info = own_info_static(key)
        info.update(load_own(key, options).info())
        return info
    info = {"name": key}
    for k, v in _INFO[key].items():
        info[k] = list(v) if isinstance(v, (list, tuple)) else (dict(v) if isinstance(v, dict) else v)
    info["files"] = _FILES[key]
    if key == "digits":
        info["split"] = (
            f"fixed stratified split: per class a PCG64({DIGITS_SPLIT_SEED}) permutation, "
            f"{DIGITS_TEST_SIZE} test / {1797 - DIGITS_TEST_SIZE} train (largest-remainder shares)"
        )
    elif key in ("cifar10", "svhn"):
        info["split"] = f"official train/test; val = last {VAL_SIZE} official training images, train = the rest"
    else:
        info["split"] = "official train/test"
    return info


# --------------------------------------------------------------------------------------------
# The dataset object


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
            from oat_edge.training.datasets.own import is_own, own_info_static

            return own_info_static(self.name) if is_own(self.name) else dataset_info(self.name)

        def subset(self, n: int) -> "ImageDataset":
            """The first ``n`` images (deterministic, for quick evaluation)."""
            return ImageDataset(self.images[:n], self.labels[:n], self.name, self.split)

        def __repr__(self) -> str:
            return f"ImageDataset({self.name}/{self.split}, n={len(self)}, shape={list(self.images.shape[1:])})"

    return ImageDataset


_IMAGE_DATASET = None


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


_CLASS_NAMES = {
    "digits": [str(i) for i in range(10)],
    "svhn": [str(i) for i in range(10)],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
    "stl10": ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"],
}


def builtin_preprocessing(name: str) -> dict:
    """The raw → model-input contract of a built-in dataset (docs/bundle.md). digits: the
    scikit-learn values 0..16 (one grey channel, 8×8) divided by 16; the others: uint8 RGB
    pixels of the native size divided by 255."""
    from oat_edge.preprocess import make_contract

    key = _check_name(name)
    info = _INFO[key]
    c, h, w = info["input_shape"]
    if key == "digits":
        return make_contract(channels=c, image_hw=(h, w), source_dtype="float32", source_range=[0.0, 16.0],
                             scale=1.0 / 16.0, mean=info["mean"], std=info["std"], class_names=_CLASS_NAMES[key],
                             note="scikit-learn load_digits values 0..16 (ink bright on dark), "
                                  "8x8, no resize; x / 16")
    return make_contract(channels=c, image_hw=(h, w), source_dtype="uint8", mean=info["mean"], std=info["std"],
                         class_names=_CLASS_NAMES[key])


def eval_split(name: str) -> str:
    """The held-out split evaluation uses: "test", or "val" for datasets without a test split."""
    from oat_edge.training.datasets.own import is_own

    return "val" if is_own(name) else "test"


def dataset_options(meta) -> Optional[dict]:
    """The own-dataset options a checkpoint's ``dataset`` record stores (None for built-ins)."""
    return (meta or {}).get("options") if isinstance(meta, dict) else None


def load_dataset(name: str, split: str = "train", data_dir=None, options=None):
    """Load one split of a dataset as an ImageDataset (a ``TensorDataset``).

    ``split``: "train", "test", or "val" where the dataset has one (cifar10, svhn).
    Unknown datasets/splits and missing or malformed files raise ConfigError naming the file
    that was expected and where."""
    key = _check_name(name)
    from oat_edge.training.datasets.own import is_own, load_own

    if is_own(key):
        images, labels = load_own(key, options).split(split)
        return make_dataset(images, labels, key, split)
    splits = _INFO[key]["splits"]
    if split not in splits:
        raise ConfigError(f"dataset {key!r} has splits {', '.join(splits)}; got {split!r}")
    if key == "digits":
        images, labels = _load_digits(split)
    else:
        root = _require_dir(key, data_dir)
        loader = {"cifar10": _load_cifar10, "svhn": _load_svhn, "stl10": _load_stl10}[key]
        images, labels = loader(root, split)
    _check_arrays(key, split, images, labels)
    return make_dataset(images, labels, key, split)


def _check_arrays(key, split, images, labels):
    info = _INFO[key]
    if images.ndim != 4 or list(images.shape[1:]) != info["input_shape"]:
        raise ConfigError(f"{key}/{split}: images have shape {list(images.shape)}, expected [N, {info['input_shape']}]")
    if labels.shape != (images.shape[0],):
        raise ConfigError(f"{key}/{split}: {labels.shape[0]} labels for {images.shape[0]} images")
    if labels.size and (labels.min() < 0 or labels.max() >= info["num_classes"]):
        raise ConfigError(f"{key}/{split}: labels outside 0..{info['num_classes'] - 1}")


def _require_dir(key: str, data_dir) -> Path:
    if data_dir is None:
        raise ConfigError(f"dataset {key!r} reads files from --data-dir DIR; DIR must hold {_FILES[key]}")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise ConfigError(f"--data-dir {root} is not a folder; for {key!r} it must hold {_FILES[key]}")
    return root


def _find(root: Path, key: str, relative: str) -> Path:
    """``root/relative`` or ``root/<key>/relative``; ConfigError naming both if neither exists."""
    candidates = [root / relative, root / key / relative]
    for c in candidates:
        if c.is_file():
            return c
    raise ConfigError(
        f"{key}: expected file {candidates[0]} (or {candidates[1]}); --data-dir must hold {_FILES[key]}"
    )


# --- digits ----------------------------------------------------------------------------------


def digits_split(labels: np.ndarray, test_size: int = DIGITS_TEST_SIZE, seed: int = DIGITS_SPLIT_SEED):
    """(train_idx, test_idx), both sorted: the fixed stratified split described above."""
    labels = np.asarray(labels)
    classes = np.unique(labels)
    counts = np.array([(labels == c).sum() for c in classes])
    share = counts * test_size / labels.size
    n_test = np.floor(share).astype(int)
    # Largest remainder: the classes with the biggest fractional shares get one more.
    extra = test_size - n_test.sum()
    order = sorted(range(len(classes)), key=lambda i: (-(share[i] - n_test[i]), i))
    for i in order[:extra]:
        n_test[i] += 1
    rng = np.random.Generator(np.random.PCG64(seed))
    test = []
    for c, k in zip(classes, n_test):
        idx = np.flatnonzero(labels == c)
        test.append(idx[rng.permutation(idx.size)[:k]])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(labels.size), test_idx)
    return train_idx, test_idx


def _load_digits(split: str):
    try:
        from sklearn.datasets import load_digits
    except ImportError:  # pragma: no cover - scikit-learn is part of the train extra
        raise DependencyError("dataset 'digits' needs scikit-learn (pip install 'oat-edge[train]')") from None
    bunch = load_digits()
    images = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = digits_split(labels)
    idx = train_idx if split == "train" else test_idx
    return images[idx], labels[idx]


# --- CIFAR-10 --------------------------------------------------------------------------------


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


def _load_cifar10(root: Path, split: str):
    if split == "test":
        return read_cifar_batch(_find(root, "cifar10", "cifar-10-batches-py/test_batch"))
    parts = [read_cifar_batch(_find(root, "cifar10", f"cifar-10-batches-py/data_batch_{i}")) for i in range(1, 6)]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return _train_val(images, labels, split)


def _train_val(images, labels, split):
    if images.shape[0] <= VAL_SIZE:
        raise ConfigError(f"the training files hold only {images.shape[0]} images; a val split needs more than {VAL_SIZE}")
    cut = images.shape[0] - VAL_SIZE
    return (images[:cut], labels[:cut]) if split == "train" else (images[cut:], labels[cut:])


# --- SVHN ------------------------------------------------------------------------------------


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


def _load_svhn(root: Path, split: str):
    if split == "test":
        return read_svhn_mat(_find(root, "svhn", "test_32x32.mat"))
    images, labels = read_svhn_mat(_find(root, "svhn", "train_32x32.mat"))
    return _train_val(images, labels, split)


# --- STL-10 ----------------------------------------------------------------------------------


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


def _load_stl10(root: Path, split: str):
    return read_stl10(
        _find(root, "stl10", f"stl10_binary/{split}_X.bin"), _find(root, "stl10", f"stl10_binary/{split}_y.bin")
    )


# --------------------------------------------------------------------------------------------
# Deterministic batching


def epoch_seed(seed: int, epoch: int) -> int:
    """The torch seed of one epoch: a pure function of (seed, epoch), decorrelated by numpy's
    SeedSequence (no collisions between e.g. (0, 1000) and (1, 0))."""
    if int(seed) < 0 or int(epoch) < 0:
        raise ConfigError(f"seed and epoch must be ≥ 0, got seed={seed}, epoch={epoch}")
    state = np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1, np.uint64)[0]
    return int(state >> np.uint64(1))


def _dataset_name(dataset) -> Optional[str]:
    from oat_edge.training.datasets.own import is_own

    name = getattr(dataset, "name", None)
    return name if name in _INFO or is_own(name) else None


def epoch_batches(
    dataset,
    batch_size: int,
    seed: int,
    epoch: int,
    augment=True,
    drop_last: bool = True,
    shuffle: bool = True,
    rank: int = 0,
    world_size: int = 1,
    start_batch: int = 0,
    device=None,
) -> Iterator[tuple]:
    """Yield the (x, y) batches of one epoch.

    Order and augmentation are drawn from one ``torch.Generator`` seeded with
    ``epoch_seed(seed, epoch)``: first the permutation of the whole dataset, then the
    augmentation parameters of every position of that permutation. So epoch ``e`` is the same
    whatever happened before it (resume-safe) and the same sample gets the same augmentation
    for any ``world_size``/``batch_size``.

    DDP: with ``world_size`` > 1 each rank takes positions ``rank, rank + world_size, ...`` of
    the epoch permutation (disjoint shards). When shuffling, the permutation is first padded
    by wrapping around (or, with ``drop_last``, truncated) to a multiple of ``world_size`` so
    every rank gets the same number of batches, as DistributedSampler does. Without shuffling
    (evaluation) shards are not padded, so no image is counted twice.

    ``augment``: True (the dataset's own augmentation, see ``augment.spec_for``), False/None,
    or an ``augment.AugmentSpec``. ``drop_last`` drops an incomplete final batch.
    ``start_batch`` skips the first batches (mid-epoch resume) without changing the others.
    """
    import torch

    from oat_edge.training.augment import AugmentSpec, apply_augment, sample_params, spec_for

    if batch_size < 1:
        raise ConfigError(f"batch size must be ≥ 1, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"need 0 ≤ rank < world_size, got rank={rank}, world_size={world_size}")
    x_all, y_all = dataset.tensors[0], dataset.tensors[1]
    n = x_all.shape[0]
    if augment is True:
        spec = spec_for(_dataset_name(dataset), tuple(x_all.shape[-2:])) if _dataset_name(dataset) else None
    elif isinstance(augment, AugmentSpec):
        spec = augment
    else:
        spec = None
    gen = torch.Generator().manual_seed(epoch_seed(seed, epoch))

    if shuffle:
        order = torch.randperm(n, generator=gen)
        if world_size > 1:
            if drop_last:
                order = order[: (n // world_size) * world_size]
            else:
                total = math.ceil(n / world_size) * world_size
                order = torch.cat([order, order[: total - n]]) if total > n else order
    else:
        order = torch.arange(n)
    params = sample_params(spec, order.shape[0], x_all.shape[-2:], gen) if spec is not None and spec.active else None
    positions = torch.arange(rank, order.shape[0], world_size)
    count = positions.shape[0]
    n_batches = count // batch_size if drop_last else math.ceil(count / batch_size)
    for b in range(start_batch, n_batches):
        pos = positions[b * batch_size : (b + 1) * batch_size]
        idx = order[pos]
        x, y = x_all[idx], y_all[idx]
        if params is not None:
            x = apply_augment(x, {k: v[pos] for k, v in params.items()}, spec)
        if device is not None:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        yield x, y


class EpochLoader:
    """A re-iterable loader over ``epoch_batches``: ``set_epoch(e)`` then iterate (the
    DataLoader + DistributedSampler pattern, without worker processes: batches are gathered
    and augmented as whole-tensor ops)."""

    def __init__(self, dataset, batch_size, train, seed=0, augment=None, drop_last=None, rank=0, world_size=1, device=None):
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.train = bool(train)
        self.seed = int(seed)
        self.augment = self.train if augment is None else augment
        self.drop_last = self.train if drop_last is None else bool(drop_last)
        self.rank, self.world_size = int(rank), int(world_size)
        self.device = device
        self.epoch = 0
        self.start_batch = 0
        epoch_seed(self.seed, 0)  # validates the seed
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be ≥ 1, got {batch_size}")

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = int(epoch)
        self.start_batch = int(start_batch)

    def __len__(self) -> int:
        n = len(self.dataset)
        if self.train and self.world_size > 1:
            n = (n // self.world_size) * self.world_size if self.drop_last else math.ceil(n / self.world_size) * self.world_size
        count = len(range(self.rank, n, self.world_size))
        return count // self.batch_size if self.drop_last else math.ceil(count / self.batch_size)

    def __iter__(self):
        return epoch_batches(
            self.dataset, self.batch_size, self.seed, self.epoch, augment=self.augment,
            drop_last=self.drop_last, shuffle=self.train, rank=self.rank, world_size=self.world_size,
            start_batch=self.start_batch, device=self.device,
        )


def make_loader(dataset, batch_size: int, train: bool, seed: int = 0, augment=None, drop_last=None,
                rank: int = 0, world_size: int = 1, device=None) -> EpochLoader:
    """A deterministic loader. ``train=True``: shuffled, the dataset's augmentation, drop_last
    (the reference's training loader); ``train=False``: dataset order, no augmentation, every
    image once. Call ``loader.set_epoch(e)`` before iterating epoch ``e``."""
    return EpochLoader(dataset, batch_size, train, seed, augment, drop_last, rank, world_size, device)
