"""Pre-activation WRN: BN before the convolution (no conv to fold it into) must become a
per-channel affine, and the exported paths must still reproduce the model."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

from export_helpers import make_checkpoint
from oat_edge.export import export_bundle, film_vector, load_film_tables, load_manifest
from oat_edge.export.freeze import folded_bn_count, freeze_path
from oat_edge.lambda_code import S1, S3_UNSEEN
from oat_edge.checkpoint import load_model

SVHN = {"name": "svhn", "num_classes": 10, "input_shape": [3, 32, 32]}


@pytest.fixture(scope="module")
def wrn(tmp_path_factory):
    # WRN-16-8 at reduced widths keeps the graph small; the architecture is the paper's.
    ckpt = make_checkpoint(tmp_path_factory.mktemp("wrn") / "wrn.pt", arch="wrn16_8",
                           arch_kwargs={"widths": [0.25, 0.5]}, dataset=SVHN, input_shape=(3, 32, 32))
    model, _ = load_model(ckpt)
    return ckpt, model.eval()


def test_preactivation_bn_becomes_affine_in_torch(wrn):
    _, model = wrn
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    gm = freeze_path(model, 0.25, "a")
    counts = folded_bn_count(gm)
    # WRN-16-8: 6 blocks; block 0's first BN follows the stem conv (folded), blocks 1-5's first
    # BN and the final BN follow a residual sum: 6 affines; every other BN is folded.
    assert counts == {"batchnorm": 0, "affine": 6, "conv": 16}
    for lam in (0.1, 0.35, 1.0):
        model.set_width(0.25)
        with torch.no_grad():
            ref = model(x, lam)
            out = gm(x, model.film_vectors([lam], 0.25)[0])
            baked = freeze_path(model, 0.25, "a", film_vector=model.film_vectors([lam], 0.25)[0])(x)
        assert (out - ref).abs().max() <= 1e-5 and (baked - ref).abs().max() <= 1e-5


@pytest.mark.slow
def test_wrn_export_parity_on_random_images(wrn, tmp_path):
    ckpt, model = wrn
    out = export_bundle(ckpt, tmp_path / "b", widths=[0.25], bake=[0.2], tensorrt="off", progress=False,
                        parity_images=16)
    manifest = load_manifest(out)
    assert manifest["parity_inputs"]["source"].startswith("uniform")  # no SVHN files on this machine
    tables = load_film_tables(out / "film.npz")
    x = np.random.default_rng(3).random((16, 3, 32, 32), dtype=np.float32)
    model.set_width(0.25)
    for e in manifest["paths"]:
        assert e["folded"]["affine"] == 6 and "BatchNormalization" not in e["ops"]
        sess = ort.InferenceSession(str(out / e["file"]), providers=["CPUExecutionProvider"])
        lams = [0.0] if e["bn"] == "c" else sorted((set(S1) | set(S3_UNSEEN)) - {0.0})
        for lam in lams:
            got = sess.run(None, {"images": x, "film": film_vector(tables, lam, 0.25)})[0]
            with torch.no_grad():
                ref = model(torch.from_numpy(x), lam).numpy()
            assert np.abs(got - ref).max() <= 1e-4, (e["id"], lam)
            assert (got.argmax(1) == ref.argmax(1)).all()
    (b,) = manifest["baked"]
    assert b["folded"]["affine"] == 6  # BN + FiLM merged into one affine where no conv precedes
    assert b["parity"]["max_abs_diff"] <= 1e-4
