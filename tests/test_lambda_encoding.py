"""λ encodings ("ro", "ro-slerp", "scalar"): the model, the numpy reference (encode_lambdas),
the exported film.npz/manifest and the runtime's FiLM computer give an off-grid λ the same code."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from oat_edge.errors import ConfigError
from oat_edge.lambda_code import LAMBDA_ENCODINGS, S1, encode_lambdas, make_code_matrix
from oat_edge.models import create_model, get_model_defaults

from runtime_support import impl_params

KW = {"channels": [4, 8, 8], "widths": [0.5, 1.0], "film_init": "identity"}
OFF_GRID = (0.05, 0.15, 0.2345, 0.55, 0.8125)


def _train_step(encoding: str):
    """A resnet_tiny under ``encoding`` after one SGD step on digits with mixed λ at both widths."""
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    model = create_model("resnet_tiny", lambda_encoding=encoding, **KW)
    d = load_digits()
    x = torch.from_numpy(d.images[:32, None].astype(np.float32) / 16.0)
    y = torch.from_numpy(d.target[:32]).long()
    lam = torch.tensor(S1)[torch.arange(32) % len(S1)]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    opt.zero_grad()
    for w in model.widths:
        model.set_width(w)
        F.cross_entropy(model(x, lam), y).backward()
    opt.step()
    return model.eval()


def test_ro_is_unchanged():
    """The default stays the paper's linear blend of rows of the seeded orthogonal matrix."""
    assert get_model_defaults("resnet_tiny")["lambda_encoding"] == "ro"
    rows = make_code_matrix(0, 128)[: len(S1)]
    code = encode_lambdas([0.25], S1, rows)[0]  # halfway between the rows of 0.2 and 0.3
    expect = (0.5 * rows[2].astype(np.float64) + 0.5 * rows[3].astype(np.float64)).astype(np.float32)
    assert np.array_equal(code, expect)
    assert np.array_equal(encode_lambdas([0.25], S1, rows, "ro"), code[None])


def test_slerp_keeps_the_norm_and_scalar_is_lambda():
    rows = make_code_matrix(3, 16)[: len(S1)]
    lams = np.linspace(0.0, 1.0, 41)
    ro = np.linalg.norm(encode_lambdas(lams, S1, rows, "ro"), axis=1)
    sl = np.linalg.norm(encode_lambdas(lams, S1, rows, "ro-slerp"), axis=1)
    np.testing.assert_allclose(sl, 1.0, atol=1e-6)
    assert ro.min() < 0.75  # the linear blend shrinks to 1/√2 midway between two rows
    # slerp still hits the training rows exactly; a quarter of the way from the row of 0.2 to
    # that of 0.3 (orthonormal: a 90° arc) it is 22.5° from the first row
    assert np.array_equal(encode_lambdas(S1, S1, rows, "ro-slerp"), rows)
    code = encode_lambdas([0.225], S1, rows, "ro-slerp")[0].astype(np.float64)
    np.testing.assert_allclose([code @ rows[2], code @ rows[3]], [np.cos(np.pi / 8), np.sin(np.pi / 8)], atol=1e-6)
    assert np.array_equal(encode_lambdas([0.0, 0.37, 1.0], S1, rows, "scalar")[:, 0], np.float32([0.0, 0.37, 1.0]))


def test_model_codes_match_the_reference():
    for enc in LAMBDA_ENCODINGS:
        m = create_model("resnet_tiny", lambda_encoding=enc, **KW)
        ref = encode_lambdas(OFF_GRID + S1, m.train_lambdas, m.code_rows().numpy(), enc)
        np.testing.assert_allclose(m.encode(list(OFF_GRID + S1)).numpy(), ref, rtol=0, atol=1e-7)
        assert m.code_dim == (1 if enc == "scalar" else 128)


def test_bad_encoding_is_one_clear_error():
    with pytest.raises(ConfigError, match="lambda_encoding must be one of ro, ro-slerp, scalar"):
        create_model("resnet_tiny", lambda_encoding="sine", **KW)


_EXPORTED: dict = {}


def _exported(encoding: str, tmp_path_factory):
    """(trained model, bundle) of an encoding: trained one step, saved, exported (once per run)."""
    from oat_edge.checkpoint import load_model, save_checkpoint
    from oat_edge.export import export_bundle

    if encoding not in _EXPORTED:
        tmp = tmp_path_factory.mktemp(f"enc-{encoding}")
        model = _train_step(encoding)
        kwargs = {**get_model_defaults("resnet_tiny"), **KW, "lambda_encoding": encoding}
        ckpt = save_checkpoint(tmp / "m.pt", {
            "arch": "resnet_tiny", "arch_kwargs": {k: (list(v) if isinstance(v, tuple) else v) for k, v in kwargs.items()},
            "model": model.state_dict(), "method": "oats", "epoch": 1,
            "dataset": {"name": "digits", "num_classes": 10, "input_shape": [1, 8, 8], "mean": [0.5], "std": [0.5]},
        })
        loaded, _ = load_model(ckpt)
        assert loaded.lambda_encoding == encoding
        bundle = export_bundle(ckpt, tmp / "b", bake=(), tensorrt="off", progress=False, parity_images=8)
        _EXPORTED[encoding] = (model, bundle)
    return _EXPORTED[encoding]


@pytest.mark.parametrize("impl", impl_params())
@pytest.mark.parametrize("encoding", LAMBDA_ENCODINGS)
def test_encoding_trains_exports_and_runs(encoding, impl, tmp_path_factory):
    from oat_edge.bundle.film import load_film_tables, tables_encoding
    from oat_edge.runtime import Runtime

    model, bundle = _exported(encoding, tmp_path_factory)
    film = json.loads((bundle / "manifest.json").read_text())["film"]
    # "ro" bundles carry nothing new (identical to older exports); others name their encoding
    assert film.get("lambda_encoding") == (None if encoding == "ro" else encoding)
    assert tables_encoding(load_film_tables(bundle / "film.npz")) == encoding

    with Runtime(bundle, backend="onnxruntime", threads=1, impl=impl) as rt:
        for lam in OFF_GRID:
            code = np.empty(model.code_dim, np.float32)
            rt._modes.film.computer.encode(lam, code)
            np.testing.assert_allclose(code, model.encode([lam])[0].numpy(), rtol=0, atol=1e-7)
            for w in model.widths:
                want = model.film_vectors([lam], w)[0].numpy()
                np.testing.assert_allclose(rt.film_vector(lam, w), want, rtol=1e-5, atol=1e-6)
        # an off-grid mode (computed FiLM vector) gives the model's logits
        x = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
        assert rt._modes.film.grid_row(0.2345) is None
        rt.set_mode(0.2345, 1.0)
        model.set_mode(0.2345, 1.0)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(rt.infer(x), ref, rtol=1e-4, atol=1e-4)


def test_manifest_encoding_must_match_film_npz(tmp_path_factory, tmp_path):
    """A manifest edited to claim another encoding than film.npz holds is refused."""
    import shutil

    from oat_edge.errors import BundleError
    from oat_edge.runtime import Runtime

    _, bundle = _exported("ro-slerp", tmp_path_factory)
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["film"]["lambda_encoding"]  # now reads as "ro"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="lambda_encoding 'ro' differs from film.npz's 'ro-slerp'"):
        Runtime(copy, backend="onnxruntime", threads=1)


def test_unknown_encoding_in_film_npz_is_refused(tmp_path):
    """A film.npz naming an encoding this version does not know fails with one BundleError."""
    from oat_edge.errors import BundleError
    from oat_edge.runtime.film import FilmBank
    from oat_edge.runtime import _fallback
    from oat_edge.bundle.film import save_film_tables

    rows = make_code_matrix(0, 8)[:2]
    tables = {"lambda_grid": np.array([0.0, 1.0]), "train_lambdas": np.array([0.0, 1.0]), "code_rows": rows,
              "widths": np.array([1.0]), "negative_slope": np.asarray(0.01), "lambda_encoding": np.asarray("sine"),
              "table_w1": np.zeros((2, 2), np.float32), "sites_w1": np.array([[0, 1]], np.int64),
              "fc1_weight_w1_s0": np.zeros((2, 8), np.float32), "fc1_bias_w1_s0": np.zeros(2, np.float32),
              "fc2_weight_w1_s0": np.zeros((2, 2), np.float32), "fc2_bias_w1_s0": np.zeros(2, np.float32)}
    save_film_tables(tmp_path / "film.npz", tables)
    with pytest.raises(BundleError, match="lambda_encoding"):
        FilmBank(tmp_path / "film.npz", [1.0], {1.0: 2}, 0.01, _fallback)
