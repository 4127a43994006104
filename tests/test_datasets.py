"""Datasets: the official file formats (written here byte for byte as distributed), the fixed
digits split, augmentation, and the deterministic, resumable, shardable loader."""

from __future__ import annotations

import hashlib
import pickle
import struct

import numpy as np
import pytest
import torch

from oat_edge.errors import ConfigError
from oat_edge.training.datasets import spec as dataset_spec
from oat_edge.training.augment import AugmentSpec, apply_augment, sample_params
from oat_edge.training.datasets import (
    DATASETS,
    get_spec,
    dataset_info,
    digits_split,
    epoch_seed,
    epoch_batches,
    load_dataset,
    make_dataset,
    make_loader,
)


# --- dataset_info -----------------------------------------------------------------------------


def test_dataset_info_has_the_contract_keys_for_every_dataset():
    for name in DATASETS:
        info = dataset_info(name)
        for key in ("name", "num_classes", "input_shape", "mean", "std", "default_arch", "eps", "step_size"):
            assert key in info, (name, key)
        assert len(info["mean"]) == len(info["std"]) == info["input_shape"][0]
    for name in ("cifar10", "svhn", "stl10"):
        assert dataset_info(name)["eps"] == pytest.approx(8 / 255)
        # the reference code's step is the default; the paper's text is kept beside it
        assert dataset_info(name)["step_size"] == pytest.approx(min(1.25 * 8 / 255, 8 / 255 + 4 / 255) / 7)
        assert dataset_info(name)["step_size_paper"] == pytest.approx(2 / 255)
    assert (dataset_info("digits")["eps"], dataset_info("digits")["step_size"]) == (0.25, 0.0625)
    # A caller mutating its copy must not change the next answer.
    dataset_info("cifar10")["mean"].append(9)
    assert len(dataset_info("cifar10")["mean"]) == 3


def test_unknown_dataset_is_one_config_error():
    with pytest.raises(ConfigError, match="unknown dataset 'mnist'.*digits"):
        dataset_info("mnist")
    with pytest.raises(ConfigError, match="unknown dataset"):
        load_dataset("imagenet", "train")
    with pytest.raises(ConfigError, match="splits train, test"):
        load_dataset("digits", "val")


# --- digits -----------------------------------------------------------------------------------


def test_digits_split_is_fixed_stratified_and_complete():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    train_idx, test_idx = digits_split(bunch.target)
    assert len(train_idx) == 1437 and len(test_idx) == 360
    assert np.intersect1d(train_idx, test_idx).size == 0
    assert np.union1d(train_idx, test_idx).size == 1797
    per_class = np.bincount(bunch.target[test_idx], minlength=10)
    assert per_class.min() >= 35 and per_class.max() <= 37
    # The split is part of the contract: results on "digits/test" stay comparable across
    # versions. This fingerprint changes only if the split does.
    digest = hashlib.sha256(test_idx.astype("<i8").tobytes()).hexdigest()
    assert digest == "029b55daa6f2edd89879dbf642826ff0d19422b26daba57377d2e31ed02cf1ff"


def test_digits_images_are_scaled_and_match_sklearn():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    train = load_dataset("digits", "train")
    test = load_dataset("digits", "test")
    assert len(train) == 1437 and len(test) == 360
    x, y = test[0]
    assert x.dtype == torch.float32 and x.shape == (1, 8, 8) and y.dtype == torch.int64
    _, test_idx = digits_split(bunch.target)
    np.testing.assert_allclose(test.images[:, 0].numpy(), bunch.images[test_idx] / 16.0, atol=1e-7)
    np.testing.assert_array_equal(test.labels.numpy(), bunch.target[test_idx])
    assert float(train.images.min()) == 0.0 and float(train.images.max()) == 1.0
    info = dataset_info("digits")
    assert float(train.images.mean()) == pytest.approx(info["mean"][0], abs=1e-3)
    assert float(train.images.std()) == pytest.approx(info["std"][0], abs=1e-3)
    assert train.name == "digits" and train.split == "train"



# --- CIFAR-10 python batches -----------------------------------------------------------------


class _Py2Pickler(pickle._Pickler):
    """Writes a protocol-2 pickle the way Python 2's cPickle wrote the CIFAR-10 batches: byte
    strings as BINSTRING and numpy's array rebuilder under its old module name."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj):
        n = len(obj)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str

    def save_global(self, obj, name=None):
        if getattr(obj, "__name__", None) == "_reconstruct":
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def _write_cifar_batch(path, data: np.ndarray, labels):
    path.parent.mkdir(parents=True, exist_ok=True)
    obj = {b"batch_label": b"testing batch 1 of 1", b"labels": list(map(int, labels)), b"data": data,
           b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))]}
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(obj)


@pytest.fixture
def cifar_dir(tmp_path):
    rng = np.random.default_rng(0)
    batches = {}
    for i, name in enumerate(["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]):
        data = rng.integers(0, 256, size=(3, 3072), dtype=np.uint8)
        labels = [(i + k) % 10 for k in range(3)]
        _write_cifar_batch(tmp_path / "cifar-10-batches-py" / name, data, labels)
        batches[name] = (data, labels)
    return tmp_path, batches


def test_the_test_pickle_looks_like_the_official_one(cifar_dir):
    root, _ = cifar_dir
    raw = (root / "cifar-10-batches-py" / "test_batch").read_bytes()
    assert raw[:2] == b"\x80\x02"  # protocol 2
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in raw
    assert b"_codecs" not in raw  # byte strings are Python 2 str, not re-encoded unicode


def test_cifar10_reads_official_batches_with_exact_layout(cifar_dir, monkeypatch):
    root, batches = cifar_dir
    test = load_dataset("cifar10", "test", root)
    data, labels = batches["test_batch"]
    assert test.images.shape == (3, 3, 32, 32)
    # Row layout: 1024 red, 1024 green, 1024 blue values, each 32×32 row-major.
    for n, c, r, col in [(0, 0, 0, 0), (1, 1, 5, 7), (2, 2, 31, 30), (0, 2, 10, 3)]:
        assert float(test.images[n, c, r, col]) == pytest.approx(data[n, c * 1024 + r * 32 + col] / 255.0)
    assert test.labels.tolist() == labels
    # train = official train minus the last VAL_SIZE images (reference convention); with tiny
    # files, shrink the held-out tail to 4 images.
    monkeypatch.setattr(dataset_spec, "VAL_SIZE", 4)
    train = load_dataset("cifar10", "train", root)
    val = load_dataset("cifar10", "val", root)
    assert len(train) == 11 and len(val) == 4
    all_labels = sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert train.labels.tolist() + val.labels.tolist() == all_labels
    assert float(val.images[-1, 1, 2, 3]) == pytest.approx(batches["data_batch_5"][0][2, 1024 + 2 * 32 + 3] / 255.0)


def test_cifar10_accepts_a_dataset_named_subfolder(cifar_dir, tmp_path):
    root, _ = cifar_dir
    (tmp_path / "data").mkdir()
    (root / "cifar-10-batches-py").rename(tmp_path / "data" / "cifar-10-batches-py")
    nested = tmp_path / "outer"
    nested.mkdir()
    (tmp_path / "data").rename(nested / "cifar10")
    assert len(load_dataset("cifar10", "test", nested)) == 3


def test_cifar10_refuses_a_pickle_that_would_run_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.parent.mkdir()
    # A classic malicious pickle: calls os.system("touch marker") when loaded.
    path.write_bytes(b"cposix\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    with pytest.raises(ConfigError, match="refusing to load global posix.system"):
        load_dataset("cifar10", "test", tmp_path)
    assert not marker.exists()


def test_cifar10_missing_files_and_bad_contents(tmp_path):
    with pytest.raises(ConfigError, match="--data-dir DIR.*cifar-10-batches-py"):
        load_dataset("cifar10", "test")
    with pytest.raises(ConfigError, match=r"expected file .*cifar-10-batches-py/test_batch"):
        load_dataset("cifar10", "test", tmp_path)
    with pytest.raises(ConfigError, match="is not a folder"):
        load_dataset("cifar10", "test", tmp_path / "nope")
    _write_cifar_batch(tmp_path / "cifar-10-batches-py" / "test_batch", np.zeros((2, 100), np.uint8), [0, 1])
    with pytest.raises(ConfigError, match=r"uint8 array \[N, 3072\]"):
        load_dataset("cifar10", "test", tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"\x80\x02}q\x00(")  # truncated
    with pytest.raises(ConfigError, match="not a CIFAR-10 python batch"):
        load_dataset("cifar10", "test", tmp_path)


# --- SVHN .mat ----------------------------------------------------------------------------------


def _write_svhn(path, n, seed):
    import scipy.io

    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
    y = (np.arange(n, dtype=np.uint8) % 10 + 1).reshape(n, 1)  # 1..10, 10 = digit 0
    scipy.io.savemat(str(path), {"X": x, "y": y})
    return x, y


def test_svhn_reads_mat_files_with_exact_layout_and_label_10_as_0(tmp_path):
    x, y = _write_svhn(tmp_path / "test_32x32.mat", 12, 1)
    test = load_dataset("svhn", "test", tmp_path)
    assert test.images.shape == (12, 3, 32, 32)
    for n, c, r, col in [(0, 0, 0, 0), (3, 1, 4, 9), (11, 2, 31, 0), (9, 0, 0, 31)]:
        assert float(test.images[n, c, r, col]) == pytest.approx(x[r, col, c, n] / 255.0)
    expected = [int(v) % 10 for v in y[:, 0]]
    assert test.labels.tolist() == expected and 0 in expected and 10 not in test.labels.tolist()


def test_svhn_train_val_and_missing_file(tmp_path, monkeypatch):
    _write_svhn(tmp_path / "train_32x32.mat", 10, 2)
    monkeypatch.setattr(dataset_spec, "VAL_SIZE", 3)
    assert len(load_dataset("svhn", "train", tmp_path)) == 7
    assert len(load_dataset("svhn", "val", tmp_path)) == 3
    with pytest.raises(ConfigError, match="test_32x32.mat"):
        load_dataset("svhn", "test", tmp_path)
    (tmp_path / "test_32x32.mat").write_bytes(b"not a mat file")
    with pytest.raises(ConfigError, match="not a readable SVHN .mat"):
        load_dataset("svhn", "test", tmp_path)


# --- STL-10 binary ------------------------------------------------------------------------------


def test_stl10_reads_column_major_binaries(tmp_path):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(4, 3, 96, 96), dtype=np.uint8)  # [n, c, row, col]
    images[1, 0, 0, 5] = 255  # a marker in row 0, column 5
    images[1, 0, 5, 0] = 0
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    # The distributed files store each channel column by column (MATLAB order).
    (folder / "test_X.bin").write_bytes(np.ascontiguousarray(images.transpose(0, 1, 3, 2)).tobytes())
    (folder / "test_y.bin").write_bytes(bytes([1, 10, 3, 7]))
    test = load_dataset("stl10", "test", tmp_path)
    np.testing.assert_array_equal((test.images * 255).round().to(torch.uint8).numpy(), images)
    assert float(test.images[1, 0, 0, 5]) == 1.0 and float(test.images[1, 0, 5, 0]) == 0.0
    # Byte 5·96 of the red plane of image 1 is column 5, row 0.
    raw = (folder / "test_X.bin").read_bytes()
    assert raw[3 * 96 * 96 + 5 * 96] == 255
    assert test.labels.tolist() == [0, 9, 2, 6]


def test_stl10_bad_files(tmp_path):
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    with pytest.raises(ConfigError, match="stl10_binary/train_X.bin"):
        load_dataset("stl10", "train", tmp_path)
    (folder / "train_X.bin").write_bytes(bytes(3 * 96 * 96 + 1))
    (folder / "train_y.bin").write_bytes(bytes([1]))
    with pytest.raises(ConfigError, match="not a whole number"):
        load_dataset("stl10", "train", tmp_path)
    (folder / "train_X.bin").write_bytes(bytes(2 * 3 * 96 * 96))
    with pytest.raises(ConfigError, match="1 labels for 2 images"):
        load_dataset("stl10", "train", tmp_path)
    (folder / "train_y.bin").write_bytes(bytes([0, 11]))
    with pytest.raises(ConfigError, match="labels must be 1..10"):
        load_dataset("stl10", "train", tmp_path)


# --- augmentation -----------------------------------------------------------------------------


def _shift_reference(img: torch.Tensor, pad: int, dy: int, dx: int) -> torch.Tensor:
    """One image, the slow obvious way: pad with zeros, cut the window at (dy, dx)."""
    c, h, w = img.shape
    big = torch.zeros(c, h + 2 * pad, w + 2 * pad)
    big[:, pad : pad + h, pad : pad + w] = img
    return big[:, dy : dy + h, dx : dx + w]


def test_batched_crop_and_flip_match_the_per_image_definition():
    spec = AugmentSpec(pad=4, flip=True)
    x = torch.rand(16, 3, 32, 32)
    gen = torch.Generator().manual_seed(0)
    params = sample_params(spec, 16, (32, 32), gen)
    out = apply_augment(x, params, spec)
    assert out.shape == x.shape
    assert params["dy"].min() >= 0 and params["dy"].max() <= 8
    for i in range(16):
        ref = _shift_reference(x[i], 4, int(params["dy"][i]), int(params["dx"][i]))
        if params["flip"][i]:
            ref = ref.flip(2)
        torch.testing.assert_close(out[i], ref, rtol=0, atol=0)
    # Centre offsets and no flip are the identity.
    same = {"dy": torch.full((16,), 4), "dx": torch.full((16,), 4), "flip": torch.zeros(16, dtype=torch.bool)}
    torch.testing.assert_close(apply_augment(x, same, spec), x, rtol=0, atol=0)


def test_dataset_augmentations():
    assert get_spec("cifar10").augment() == AugmentSpec(4, True) and get_spec("stl10").augment() == AugmentSpec(4, True)
    assert not get_spec("svhn").augment().active and not get_spec("digits").augment().flip and get_spec("digits").augment().pad == 1
    # Digits: every augmented image is the original shifted by at most one pixel, never mirrored.
    train = load_dataset("digits", "train").subset(64)
    batches = list(epoch_batches(train, 64, seed=5, epoch=0, drop_last=False))
    order = torch.randperm(64, generator=torch.Generator().manual_seed(epoch_seed(5, 0)))
    x_aug = batches[0][0]
    for i in range(64):
        img = train.images[order[i]]
        candidates = [_shift_reference(img, 1, dy, dx) for dy in range(3) for dx in range(3)]
        assert any(torch.equal(x_aug[i], c) for c in candidates)
    assert not torch.equal(x_aug, train.images[order])  # something moved


# --- the loader -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy():
    # The "label" is the sample index, so batches reveal the order (augmentation moves pixels).
    n = 50
    return make_dataset(torch.rand(n, 3, 8, 8).numpy(), np.arange(n), "cifar10", "train")


def _collect(it):
    xs, ys = zip(*list(it))
    return torch.cat(xs), torch.cat(ys)


def test_an_epoch_is_a_pure_function_of_seed_and_epoch(toy):
    torch.manual_seed(1)
    a = _collect(epoch_batches(toy, 8, seed=7, epoch=3))
    torch.manual_seed(999)  # the global RNG must not matter
    _ = torch.rand(10)
    b = _collect(epoch_batches(toy, 8, seed=7, epoch=3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = _collect(epoch_batches(toy, 8, seed=7, epoch=4))
    d = _collect(epoch_batches(toy, 8, seed=8, epoch=3))
    assert not torch.equal(a[1], c[1]) and not torch.equal(a[1], d[1])
    assert a[0].shape[0] == 48  # drop_last on 50 images
    # The loader leaves the global RNG alone.
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    list(epoch_batches(toy, 8, seed=7, epoch=3))
    assert torch.equal(torch.rand(3), expected)


def test_make_loader_resume_mid_run_and_mid_epoch(toy):
    loader = make_loader(toy, 8, train=True, seed=2)
    run = []
    for epoch in range(3):
        loader.set_epoch(epoch)
        run.append(_collect(loader))
    assert len(loader) == 6
    resumed = make_loader(toy, 8, train=True, seed=2)
    resumed.set_epoch(2)
    assert torch.equal(_collect(resumed)[0], run[2][0])
    resumed.set_epoch(2, start_batch=4)
    tail = _collect(resumed)
    assert torch.equal(tail[0], run[2][0][32:])


def test_eval_loader_is_in_order_without_augmentation(toy):
    loader = make_loader(toy, 16, train=False)
    x, y = _collect(loader)
    assert len(loader) == 4 and torch.equal(x, toy.images) and torch.equal(y, toy.labels)


def test_ddp_shards_are_disjoint_slices_of_the_same_epoch(toy):
    single = _collect(epoch_batches(toy, 1, seed=4, epoch=1, drop_last=True))
    shards = []
    for rank in range(2):
        x, y = _collect(epoch_batches(toy, 5, seed=4, epoch=1, rank=rank, world_size=2, drop_last=True))
        shards.append(y)
        # Rank r gets positions r, r+2, ... of the one permutation, with the same augmentation
        # those samples get in a single-process run.
        torch.testing.assert_close(x, single[0][rank::2][: x.shape[0]], rtol=0, atol=0)
    assert shards[0].shape[0] == shards[1].shape[0] == 25
    ids = [set(s.tolist()) for s in shards]
    assert not ids[0] & ids[1] and ids[0] | ids[1] == set(range(50))
    # Without drop_last the permutation is padded so both ranks get the same batch count.
    loaders = [make_loader(toy, 4, train=True, seed=4, drop_last=False, rank=r, world_size=3) for r in range(3)]
    counts = [sum(1 for _ in ld) for ld in loaders]
    assert counts == [len(ld) for ld in loaders] == [5, 5, 5]
    # Evaluation shards cover every image exactly once.
    ev = [_collect(make_loader(toy, 4, train=False, rank=r, world_size=3))[1] for r in range(3)]
    assert sorted(torch.cat(ev).tolist()) == list(range(50))


def test_loader_argument_errors(toy):
    with pytest.raises(ConfigError, match="rank"):
        list(epoch_batches(toy, 4, seed=0, epoch=0, rank=2, world_size=2))
    with pytest.raises(ConfigError, match="batch size"):
        make_loader(toy, 0, train=True)
    with pytest.raises(ConfigError, match="seed and epoch"):
        make_loader(toy, 4, train=True, seed=-1)


def test_a_new_dataset_is_one_spec_and_one_registry_line(monkeypatch, tmp_path):
    """Every caller (facts, loading, the recipe, attack defaults, augmentation, the evaluation
    split) asks the spec, so a dataset the registry lists works everywhere with nothing else."""
    from oat_edge.training.attacks import attack_defaults
    from oat_edge.training.augment import AugmentSpec
    from oat_edge.training.config import TrainConfig
    from oat_edge.training.datasets import eval_split, registry
    from oat_edge.training.datasets.spec import FileSpec

    class Stripes(FileSpec):
        name = "stripes"
        facts = {"num_classes": 2, "input_shape": [1, 8, 8], "mean": [0.5], "std": [0.5],
                 "default_arch": "resnet_tiny", "eps": 0.1, "step_size": 0.025, "steps": 5,
                 "splits": ("train", "val"), "sizes": {"train": 32, "val": 8}, "augment": "flip"}
        recipe = {"epochs": 3, "batch_size": 8, "lr": 0.02}
        eval_split = "val"
        needs_dir = False
        flip = True

        def read(self, root, split):
            n = 32 if split == "train" else 8
            labels = np.arange(n) % 2
            images = np.zeros((n, 1, 8, 8), np.float32)
            images[labels == 1, :, ::2, :] = 1.0  # class 1: horizontal stripes
            return images, labels

    monkeypatch.setattr(registry, "SPECS", registry.SPECS + (Stripes(),))
    assert dataset_info("stripes")["num_classes"] == 2 and eval_split("stripes") == "val"
    train = load_dataset("stripes", "train")
    assert len(train) == 32 and train.info["eps"] == 0.1
    cfg = TrainConfig(dataset="stripes", method="oat").resolved()
    assert (cfg.arch, cfg.epochs, cfg.batch_size, cfg.lr, cfg.eps) == ("resnet_tiny", 3, 8, 0.02, 0.1)
    assert attack_defaults("stripes") == (0.1, 0.025)
    assert registry.get_spec("stripes").augment() == AugmentSpec(0, True)
    flipped = [x for x, _ in epoch_batches(train, 32, seed=0, epoch=0)][0]
    assert flipped.shape == (32, 1, 8, 8)
    with pytest.raises(ConfigError, match="image-size applies to folder:/npz:"):
        TrainConfig(dataset="stripes", image_size=16).resolved()
