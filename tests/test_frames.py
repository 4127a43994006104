"""The preprocessing contract (oat_edge/preprocess.py, manifest "preprocessing") and
``Runtime.infer_frames``: camera frames in, the training pipeline's tensors reproduced."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from oat_edge.errors import BundleError, InputError
from oat_edge.preprocess import apply_preprocessing, make_contract, resize, resized_hw, with_defaults

FIXTURES = Path(__file__).parent / "fixtures"


def _runtime(bundle, **kw):
    from oat_edge.runtime import Runtime

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unsigned test bundles
        return Runtime(bundle, backend="onnxruntime", threads=1, **kw)


@pytest.mark.parametrize("hw_in,hw_out", [((40, 48), (32, 38)), ((480, 640), (32, 43)), ((8, 8), (32, 32)),
                                          ((50, 44), (36, 32)), ((7, 9), (7, 9))])
def test_resize_is_antialiased_bilinear(hw_in, hw_out):
    """The numpy resize equals PyTorch's antialiased bilinear (half-pixel centres), an
    independent implementation of the same filter."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    x = np.random.default_rng(0).random((*hw_in, 3), dtype=np.float32) * 255
    ours = resize(x, *hw_out)
    ref = F.interpolate(torch.from_numpy(x).permute(2, 0, 1)[None], size=hw_out, mode="bilinear",
                        antialias=True, align_corners=False)[0].permute(1, 2, 0).numpy()
    assert np.abs(ours - ref).max() <= 1e-3  # 0..255 values: relative error ~4e-6


def test_shorter_side_resize_and_centre_crop():
    assert resized_hw(480, 640, 32) == (32, 43) and resized_hw(640, 480, 32) == (43, 32)
    contract = make_contract(channels=3, image_hw=(4, 4), resize=4)
    frame = np.zeros((4, 8, 3), np.uint8)
    frame[:, 2:6] = 255  # the centre 4 columns are white, the sides black
    x = apply_preprocessing(frame, contract, (4, 4))
    assert x.shape == (3, 4, 4) and np.allclose(x, 1.0)
    # BGR and RGB orders of the same picture give the same input
    rgb = np.random.default_rng(1).integers(0, 256, (10, 12, 3)).astype(np.uint8)
    c = make_contract(channels=3, image_hw=(6, 6), resize=6)
    assert np.allclose(apply_preprocessing(rgb, c, (6, 6)), apply_preprocessing(rgb[:, :, ::-1], c, (6, 6), "bgr"),
                       rtol=0, atol=1e-6)
    # a grey model takes BT.601 luma of a colour frame
    g = make_contract(channels=1, image_hw=(10, 12))
    y = apply_preprocessing(rgb, g, (10, 12))
    luma = (rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114) / 255
    assert np.allclose(y[0], luma, atol=1e-6)


def test_legacy_bundle_defaults_and_frames():
    """A bundle without "preprocessing" reads as the documented default: float [0, 1] frames of
    the model's size, fed as they are."""
    rt = _runtime(FIXTURES / "legacy_bundle")
    assert "preprocessing" not in rt.manifest
    assert rt.preprocessing == with_defaults(None, 1) and rt.preprocessing["color"] == "grey" and rt.class_names is None
    x = np.random.default_rng(0).random((3, 8, 8, 1), dtype=np.float32)
    frames = list(x)
    assert np.array_equal(rt.infer_frames(frames, color="rgb"), rt.infer(np.ascontiguousarray(x.transpose(0, 3, 1, 2))))
    with pytest.raises(InputError, match="no resize step"):
        rt.infer_frames(np.zeros((9, 8), np.float32))


def test_digits_contract_divides_by_16():
    """Digits bundles say: scikit-learn values 0..16, grey 8×8, x / 16 (docs/bundle.md)."""
    from runtime_support import bundle_path

    rt = _runtime(bundle_path())
    pre = rt.manifest["preprocessing"]
    assert pre["scale"] == 1 / 16 and pre["source_range"] == [0.0, 16.0] and pre["color"] == "grey"
    assert pre["resize"] is None and rt.class_names == [str(i) for i in range(10)]
    from sklearn.datasets import load_digits

    raw = load_digits().images[:5]
    frames = [img.astype(np.uint8) for img in raw]  # 0..16 integers
    ref = rt.infer((raw.astype(np.float32) / 16)[:, None])
    assert np.abs(rt.infer_frames(frames) - ref).max() == 0.0
    with pytest.raises(InputError, match="outside \\[0, 1\\]"):
        rt.infer_frames(np.full((8, 8), 200, np.uint8))  # 0..255 pixels in a 0..16 bundle


def test_schema_checks_the_contract_against_the_model():
    from oat_edge.bundle.schema import parse_manifest

    m = json.loads((FIXTURES / "legacy_bundle" / "manifest.json").read_text())
    m["preprocessing"] = make_contract(channels=1, image_hw=(8, 8), class_names=list("abcdefghij"))
    parse_manifest(json.dumps(m).encode())
    bad = dict(m, preprocessing=dict(m["preprocessing"], color="rgb"))
    with pytest.raises(BundleError, match="preprocessing.color 'rgb' does not match 1 input channel"):
        parse_manifest(json.dumps(bad).encode())
    bad = dict(m, preprocessing=dict(m["preprocessing"], class_names=["a"]))
    with pytest.raises(BundleError, match="class_names has 1 names for 10 classes"):
        parse_manifest(json.dumps(bad).encode())
    bad = dict(m, preprocessing=dict(m["preprocessing"], scale=-1.0))
    with pytest.raises(BundleError, match="preprocessing.scale"):
        parse_manifest(json.dumps(bad).encode())


@pytest.mark.slow
def test_folder_train_export_and_bgr_frames_match_pytorch(tmp_path):
    """Acceptance: train on a PNG folder (3 classes, mixed sizes, --image-size 32), export, and
    feed the original files as uint8 BGR frames (none of them 32×32) to infer_frames: the
    logits equal the PyTorch model's on the training pipeline's tensors."""
    import torch

    from oat_edge.checkpoint import load_model
    from oat_edge.cli import main
    from oat_edge.training.datasets import dataset_options
    from oat_edge.training.datasets.own import load_own
    from test_own_data import write_folder

    root = write_folder(tmp_path / "imgs", per_class=6)
    ckpt, bundle = tmp_path / "c.pt", tmp_path / "bundle"
    assert main(["train", "--dataset", f"folder:{root}", "--image-size", "32", "--epochs", "1", "--batch-size", "6",
                 "--widths", "0.5", "1.0", "--arch-kwargs", '{"channels": [8, 16, 32]}', "--threads", "1",
                 "--no-progress", "--out", str(ckpt)]) == 0
    assert main(["export", str(ckpt), "-o", str(bundle), "--tensorrt", "off", "--grid-lambdas", "0", "0.5", "1",
                 "--parity-images", "8", "--no-progress"]) == 0
    model, payload = load_model(ckpt)
    assert payload["dataset"]["class_names"] == ["blue", "green", "red"]
    assert payload["dataset"]["options"] == {"image_size": 32, "val_fraction": 0.2, "split_seed": 0}
    data = load_own(payload["dataset"]["name"], dataset_options(payload["dataset"]))
    rt = _runtime(bundle)
    assert rt.class_names == ["blue", "green", "red"]
    from PIL import Image

    frames = [np.asarray(Image.open(f).convert("RGB"))[:, :, ::-1].copy() for f in data.files]  # BGR, as cv2 reads
    assert all(f.shape[:2] != (32, 32) for f in frames)
    worst = 0.0
    for lam, width in [(0.0, 1.0), (1.0, 0.5), (0.3, 1.0)]:
        rt.set_mode(lam, width)
        model.set_width(width)
        out = rt.infer_frames(frames, color="bgr")
        with torch.no_grad():
            ref = model(torch.from_numpy(data.images), lam).numpy()
        worst = max(worst, float(np.abs(out - ref).max()))
        assert (out.argmax(1) == ref.argmax(1)).all()
    assert worst <= 1e-4, worst


def test_inspect_line_describes_the_contract():
    from oat_edge.export.report import describe_preprocessing

    assert "not recorded" in describe_preprocessing(None)
    line = describe_preprocessing(make_contract(channels=3, image_hw=(32, 32), resize=32, class_names=["a", "b"]))
    assert "uint8" in line and "shorter side → 32" in line and "centre crop 32×32" in line and "classes a, b" in line
