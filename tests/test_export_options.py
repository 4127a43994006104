"""Export options that need their own export: calibration, another opset, onnxsim failing, a
custom λ grid; plus the TensorRT op check on graphs it must refuse."""

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from export_helpers import digits_images, load_ckpt_model, tiny_checkpoint
from oat_edge.errors import BundleError
from oat_edge.export import export_bundle, film_vector, load_film_tables, load_manifest
from oat_edge.export.opcheck import check_ops, tensorrt_op_table


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Width 0.5 only, opset 18, a custom λ grid, calibration on 24 held-out digits, and
    onnxsim made to fail (the export must warn and keep the unsimplified graph)."""
    import onnxsim

    ckpt = tiny_checkpoint(tmp_path_factory)
    real = onnxsim.simplify

    def broken(*a, **k):
        raise RuntimeError("simulated onnxsim crash")

    onnxsim.simplify = broken
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = export_bundle(
                ckpt, tmp_path_factory.mktemp("small") / "b", widths=[0.5], opset=18, lambda_grid=[0.0, 0.5, 1.0],
                calibrate=True, calib_lambdas=[0.0, 0.3, 0.7], calib_max_images=24, tensorrt="off", progress=False,
                parity_images=16,
            )
    finally:
        onnxsim.simplify = real
    return out, load_manifest(out), [str(w.message) for w in caught], ckpt


def test_calibration_records_sa_ra_per_mode(small):
    _, manifest, _, _ = small
    from oat_edge.training.attacks import DEFAULT_ENSEMBLE

    cal = manifest["calibration"]
    # digits has no validation split: held-out test images (never trained on)
    assert cal["dataset"] == "digits" and cal["split"] == "test" and cal["n_images"] == 24
    # The strong ensemble by default, its worst case the robust metric, with n and standard error.
    assert list(cal["attacks"]) == list(DEFAULT_ENSEMBLE) and cal["robust_metric"] == "worst_case"
    assert cal["attacks"]["pgd7"]["steps"] == 7 and cal["attacks"]["apgd-ce"]["steps"] == 100
    modes = [(r["lam"], r["width"]) for r in cal["records"]]
    assert sorted(modes) == [(0.0, 0.5), (0.3, 0.5), (0.7, 0.5)]
    for r in cal["records"]:
        assert 0.0 <= r["sa"] <= 1.0 and 0.0 <= r["ra"]["worst_case"] <= min(r["sa"], *r["ra"].values())
        assert r["n"] == 24 and r["se"] == pytest.approx((r["ra"]["worst_case"] * (1 - r["ra"]["worst_case"]) / 24) ** 0.5)
        # SA is a count over 24 images
        assert abs(r["sa"] * 24 - round(r["sa"] * 24)) < 1e-9


def test_calibration_clean_accuracy_is_what_the_exported_file_scores(small):
    """SA of every calibrated mode, recomputed without the evaluation code: the bundle's own ONNX
    path for that mode, with that mode's FiLM vector, on the first 24 held-out test digits. A
    calibration on other images, another λ or width, or a model other than the exported one
    gives another count."""
    from oat_edge.training.datasets import load_dataset

    out, manifest, _, _ = small
    test = load_dataset("digits", "test")
    x, y = test.images[:24].numpy(), test.labels[:24].numpy()
    tables = load_film_tables(out / "film.npz")
    for rec in manifest["calibration"]["records"]:
        lam, width = rec["lam"], rec["width"]
        path = next(e for e in manifest["paths"] if e["bn"] == ("c" if lam == 0 else "a") and e["width"] == width)
        sess = ort.InferenceSession(str(out / path["file"]), providers=["CPUExecutionProvider"])
        logits = sess.run(None, {"images": x, "film": film_vector(tables, lam, width)})[0]
        correct = int((logits.argmax(1) == y).sum())
        assert rec["sa"] == pytest.approx(correct / 24, abs=1e-6), (lam, width, rec["sa"], correct)


def test_calibration_robust_figures_come_from_the_named_attacks(small):
    """The robust figures are the training stage's evaluation with the default ensemble (the
    attacks the manifest names) on the same 24 images: the export passes its settings through."""
    from oat_edge.training.datasets import load_dataset
    from oat_edge.training.evaluate import evaluate_model

    _, manifest, _, ckpt = small
    model = load_ckpt_model(ckpt)
    records = evaluate_model(model, load_dataset("digits", "test"), lambdas=[0.3], widths=[0.5], max_images=24,
                             progress=False)
    ours = next(r for r in manifest["calibration"]["records"] if r["lam"] == 0.3)
    assert ours["ra"] == records[0]["ra"]


def test_onnxsim_failure_keeps_the_unsimplified_graph(small):
    out, manifest, messages, _ = small
    assert all(e["simplified"] is False for e in manifest["paths"])
    assert any("simulated onnxsim crash" in m for m in messages)
    assert any("not simplified" in n for n in manifest["notes"])
    for e in manifest["paths"]:
        assert e["parity"]["max_abs_diff"] <= 1e-4  # still exact, just bigger
        m = onnx.load(out / e["file"])
        assert m.opset_import[0].version == 18 == manifest["tools"]["opset"]
        assert "BatchNormalization" not in e["ops"]


def test_custom_grid_and_off_grid_lambdas(small):
    out, manifest, _, ckpt = small
    assert manifest["film"]["grid"] == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 1.0]  # training λ always added
    model = load_ckpt_model(ckpt)
    tables = load_film_tables(out / "film.npz")
    x = digits_images(16)
    sess = ort.InferenceSession(str(out / "paths/a_w0.5.onnx"), providers=["CPUExecutionProvider"])
    model.set_width(0.5)
    import torch

    for lam in (0.15, 0.7, 0.9):  # off this grid: the generator route
        out_ = sess.run(None, {"images": x, "film": film_vector(tables, lam, 0.5)})[0]
        with torch.no_grad():
            ref = model(torch.from_numpy(x), lam).numpy()
        assert np.abs(out_ - ref).max() <= 1e-4


# --- op check ----------------------------------------------------------------------------------
def _model(op_type, inputs, extra_inits=(), opset=17, **attrs):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    node = helper.make_node(op_type, inputs, ["y"], name=f"{op_type}_0", **attrs)
    g = helper.make_graph([node], "g", [x], [y], list(extra_inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def test_op_check_names_unsupported_ops():
    with pytest.raises(BundleError, match="op Unique"):
        check_ops(_model("Unique", ["x"]), where="p")
    with pytest.raises(BundleError, match="op MatMulInteger"):
        check_ops(_model("MatMulInteger", ["x", "x"]), where="p")
    with pytest.raises(BundleError, match="opset 30"):
        check_ops(_model("Relu", ["x"], opset=30))
    # Reduce* with a runtime `axes` input: TensorRT needs it constant
    with pytest.raises(BundleError, match="input 1 must be a constant"):
        check_ops(_model("ReduceMean", ["x", "x"], opset=18))
    axes = onnx.numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    assert check_ops(_model("ReduceMean", ["x", "axes"], [axes], opset=18)) == []
    assert check_ops(_model("Relu", ["x"])) == []
    warned = check_ops(_model("Gelu", ["x"], opset=20))
    assert any("Gelu" in w for w in warned)


def test_op_table_is_consistent():
    t = tensorrt_op_table()
    assert {"Conv", "Relu", "Add", "Mul", "Sub", "Div", "Slice", "Reshape", "Gemm", "GlobalAveragePool"} <= set(t["supported"])
    assert not set(t["supported"]) & set(t["unsupported"])
    assert set(t["supported_since_tensorrt_8_5"]) <= set(t["supported"])


def test_force_replaces_an_existing_bundle_whole(tmp_path_factory, tmp_path):
    ckpt = tiny_checkpoint(tmp_path_factory)
    out = tmp_path / "b"
    (out / "baked").mkdir(parents=True)
    (out / "manifest.json").write_text('{"schema": "oat-edge/bundle"}')  # an older export
    (out / "baked" / "stale.onnx").write_text("from an older export")
    export_bundle(ckpt, out, widths=[1.0], force=True, tensorrt="off", progress=False, parity_images=8)
    manifest = load_manifest(out)
    assert not (out / "baked" / "stale.onnx").exists()
    assert [e["id"] for e in manifest["paths"]] == ["c_w1", "a_w1"] and manifest["baked"] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no temporary or moved-aside folders
