"""Own datasets (training/datasets/own.py): folder:PATH and npz:PATH, the split, the statistics,
determinism of multi-threaded decoding, and one clear error per kind of bad data."""

from __future__ import annotations

import numpy as np
import pytest

from oat_edge.errors import ConfigError
from oat_edge.training.datasets import dataset_info, epoch_batches, load_dataset
from oat_edge.training.datasets.own import load_own, stratified_split

PIL = pytest.importorskip("PIL.Image")


def write_folder(root, sizes=((40, 48), (36, 36), (50, 44)), per_class=6, classes=("blue", "green", "red"), seed=0):
    """PNG images, one sub-folder per class; class c has a bright square in channel c."""
    rng = np.random.default_rng(seed)
    for ci, cls in enumerate(classes):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = sizes[i % len(sizes)]
            img = rng.integers(0, 90, (h, w, 3)).astype(np.uint8)
            y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
            img[y0:y0 + h // 2, x0:x0 + w // 2, ci % 3] = 230
            PIL.fromarray(img).save(root / cls / f"{i:03d}.png")
    return root


def test_folder_dataset_shapes_classes_split_and_statistics(tmp_path):
    root = write_folder(tmp_path / "imgs")
    name = f"folder:{root}"
    info = dataset_info(name, {"image_size": 16})
    assert info["input_shape"] == [3, 16, 16] and info["num_classes"] == 3
    assert info["class_names"] == ["blue", "green", "red"]
    assert info["sizes"] == {"train": 15, "val": 3}  # round(0.2 × 6) = 1 per class
    train = load_dataset(name, "train", options={"image_size": 16})
    val = load_dataset(name, "val", options={"image_size": 16})
    assert len(train) == 15 and len(val) == 3
    assert sorted(val.labels.tolist()) == [0, 1, 2]  # stratified
    x = train.images.numpy().astype(np.float64)
    assert np.allclose(info["mean"], x.mean(axis=(0, 2, 3))) and np.allclose(info["std"], x.std(axis=(0, 2, 3)))
    assert 0.0 <= x.min() and x.max() <= 1.0
    pre = info["preprocessing"]
    assert pre["resize"]["size"] == 16 and pre["crop"]["size"] == [16, 16] and pre["color"] == "rgb"
    with pytest.raises(ConfigError, match="splits train, val"):
        load_dataset(name, "test", options={"image_size": 16})


def test_split_is_seeded_and_stratified():
    labels = np.repeat(np.arange(4), [10, 5, 3, 2])
    a = stratified_split(labels, 0.2, 0)
    b = stratified_split(labels, 0.2, 0)
    c = stratified_split(labels, 0.2, 1)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert not np.array_equal(a[1], c[1])
    assert np.bincount(labels[a[1]]).tolist() == [2, 1, 1, 1]  # every class with ≥ 2 images gives one
    assert np.intersect1d(a[0], a[1]).size == 0 and a[0].size + a[1].size == labels.size


def test_decoding_threads_and_resume_give_identical_batches(tmp_path):
    root = write_folder(tmp_path / "imgs", per_class=5)
    one = load_own(f"folder:{root}", {"image_size": 20, "workers": 1})
    images1 = one.images.copy()
    load_own.__globals__["_CACHE"].clear()
    two = load_own(f"folder:{root}", {"image_size": 20, "workers": 3})
    assert np.array_equal(images1, two.images)
    ds = load_dataset(f"folder:{root}", "train", options={"image_size": 20, "workers": 2})
    full = list(epoch_batches(ds, 4, seed=7, epoch=3))
    resumed = list(epoch_batches(ds, 4, seed=7, epoch=3, start_batch=1))
    assert len(resumed) == len(full) - 1
    assert all(np.array_equal(a[0].numpy(), b[0].numpy()) for a, b in zip(full[1:], resumed))


def test_npz_layouts_and_dtypes_agree(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (12, 10, 10, 3)).astype(np.uint8)
    y = np.arange(12) % 3
    np.savez(tmp_path / "nhwc.npz", x=x, y=y, class_names=np.array(["a", "b", "c"]))
    np.savez(tmp_path / "nchw.npz", x=x.transpose(0, 3, 1, 2), y=y)
    np.savez(tmp_path / "float.npz", x=x.astype(np.float32) / 255, y=y)
    nhwc = load_own(f"npz:{tmp_path / 'nhwc.npz'}")
    nchw = load_own(f"npz:{tmp_path / 'nchw.npz'}")
    flt = load_own(f"npz:{tmp_path / 'float.npz'}")
    assert nhwc.class_names == ["a", "b", "c"] and nchw.class_names == ["0", "1", "2"]
    assert nhwc.source["layout"] == "NHWC" and nchw.source["layout"] == "NCHW"
    assert np.array_equal(nhwc.images, nchw.images)
    assert np.allclose(nhwc.images, flt.images, atol=1e-6)
    assert nhwc.images.shape == (12, 3, 10, 10)


def _bad_data_cases(tmp_path):
    """(dataset name, options, the text the one-line error must contain)."""
    cases = []
    root = write_folder(tmp_path / "unreadable", per_class=3)
    bad = root / "green" / "001.png"
    bad.write_bytes(b"this is not a png")
    cases.append((f"folder:{root}", {"image_size": 16}, f"{bad}: not a readable image"))

    root = write_folder(tmp_path / "empty", per_class=3)
    (root / "zebra").mkdir()
    (root / "zebra" / "notes.txt").write_text("no images here")
    cases.append((f"folder:{root}", {"image_size": 16}, f"class folder {root / 'zebra'} holds no images"))

    root = write_folder(tmp_path / "mixed", per_class=3)
    cases.append((f"folder:{root}", {}, "images of mixed sizes need --image-size"))

    npz = tmp_path / "mismatch.npz"
    np.savez(npz, x=np.zeros((5, 8, 8, 3), np.uint8), y=np.zeros(4, np.int64))
    cases.append((f"npz:{npz}", {}, f"{npz}: x holds 5 images but y has shape [4]"))
    return cases


def test_bad_data_gives_one_clear_error_naming_the_file(tmp_path):
    for name, options, needle in _bad_data_cases(tmp_path):
        with pytest.raises(ConfigError) as err:
            load_own(name, options)
        message = str(err.value)
        assert needle in message and "\n" not in message, message
    # The mixed-size error names the odd file and the first one.
    with pytest.raises(ConfigError, match=r"\.png: \d+×\d+ pixels, but .*\.png is \d+×\d+"):
        load_own(f"folder:{tmp_path / 'mixed'}", {})


def test_bad_data_from_the_cli_is_one_line_and_writes_nothing(tmp_path, capsys):
    from oat_edge.cli import main

    for name, options, needle in _bad_data_cases(tmp_path):
        args = ["train", "--dataset", name, "--epochs", "1", "--no-progress", "--out", str(tmp_path / "c.pt")]
        if options.get("image_size"):
            args += ["--image-size", str(options["image_size"])]
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / "c.pt").exists()


@pytest.mark.slow
def test_resume_with_other_worker_counts_gives_the_same_weights(tmp_path):
    """Two epochs straight (1 decoding thread) equal a run stopped after epoch 1 (3 threads)
    and resumed (2 threads): the data and every batch do not depend on the thread count."""
    import torch

    from oat_edge.checkpoint import load_checkpoint
    from oat_edge.training.config import TrainConfig
    from oat_edge.training.trainers import Trainer, train

    root = write_folder(tmp_path / "imgs", per_class=4)

    def cfg(out, workers):
        return TrainConfig(dataset=f"folder:{root}", image_size=16, batch_size=4, method="oat", epochs=2,
                           arch_kwargs={"channels": [4, 8, 16]}, threads=1, progress=False, workers=workers,
                           out=str(out))

    train(cfg(tmp_path / "a.pt", 1))
    load_own.__globals__["_CACHE"].clear()
    Trainer(cfg(tmp_path / "b.pt", 3)).fit(stop_after=1)
    load_own.__globals__["_CACHE"].clear()
    train(cfg(tmp_path / "b.pt", 2), resume=str(tmp_path / "b.pt"))
    a, b = load_checkpoint(tmp_path / "a.pt"), load_checkpoint(tmp_path / "b.pt")
    assert a["epoch"] == b["epoch"] == 2
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    from oat_edge.cli import main

    # another image size is another dataset: refused
    assert main(["train", "--resume", str(tmp_path / "b.pt"), "--epochs", "3", "--image-size", "20",
                 "--no-progress"]) == 2
