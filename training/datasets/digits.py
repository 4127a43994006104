"""``digits`` — scikit-learn's ``load_digits`` (ships with scikit-learn, works offline): 1797
grey 8×8 images with values 0..16, divided by 16.

Kept at the native 8×8: ``resnet_tiny`` (two stride-2 stages, global pooling) handles it, and
upsampling would only multiply the compute without adding information. The split is fixed and
independent of scikit-learn's splitters: per class (in label order) the indices of that class
are permuted with ``numpy.random.Generator(PCG64(0))``; the class gets a test share of
360/1797 of its images, rounded by the largest-remainder rule so the test split has exactly
360 images (35–37 per class) and the train split 1437. ``digits_split()`` returns the indices.
"""

from __future__ import annotations

import numpy as np

from oat_edge.errors import DependencyError
from oat_edge.training.datasets.spec import FileSpec

DIGITS_TEST_SIZE = 360
DIGITS_SPLIT_SEED = 0


class DigitsSpec(FileSpec):
    name = "digits"
    # Digits (8×8, 17 grey levels) need a larger ε to mean anything: ε = 0.25 with PGD steps of
    # ε/4, where robustness costs accuracy and λ has a real trade-off to make (docs/robustness.md).
    facts = {
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
    }
    # Chosen under the worst-case evaluation (docs/robustness.md) so that `oat-edge train
    # --dataset digits --method oats` gives a useful OATS model quickly on a CPU:
    # PGD-10 at ε = 0.25 grown over the first epochs (a tenth of them for OAT/OATS, a third for
    # the PGD-AT/ATS baselines, whose pure adversarial training stalls otherwise), the weighted
    # clean pass, FiLM starting at γ = 1 and learning 10× faster, λ set {0, .2, .4, .6, .8, 1}.
    recipe = {"epochs": 30, "batch_size": 64, "lr": 0.05, "attack": "pgd10", "clean_pass": "weighted",
              "eps_warmup_share": {"oat": 0.1, "oats": 0.1, "pgd-at": 1 / 3, "pgd-ats": 1 / 3},
              "film_kwargs": {"film_init": "identity"}, "film_lr_mult": 10.0,
              "lambdas": (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)}
    files = "nothing: scikit-learn's load_digits ships with scikit-learn"
    split = (f"fixed stratified split: per class a PCG64({DIGITS_SPLIT_SEED}) permutation, "
             f"{DIGITS_TEST_SIZE} test / {1797 - DIGITS_TEST_SIZE} train (largest-remainder shares)")
    class_names = [str(i) for i in range(10)]

    needs_dir = False
    crop_pad = 1

    def read(self, root, split):
        return _load_digits(split)

    def preprocessing(self, name):
        """The scikit-learn values 0..16 (one grey channel, 8×8) divided by 16."""
        from oat_edge.preprocess import make_contract

        c, h, w = self.facts["input_shape"]
        return make_contract(channels=c, image_hw=(h, w), source_dtype="float32", source_range=[0.0, 16.0],
                             scale=1.0 / 16.0, mean=self.facts["mean"], std=self.facts["std"],
                             class_names=self.class_names,
                             note="scikit-learn load_digits values 0..16 (ink bright on dark), 8x8, no resize; x / 16")


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


SPEC = DigitsSpec()
