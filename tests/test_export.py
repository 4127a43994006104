"""Export stage: frozen ONNX paths, parity with the PyTorch model, FiLM tables, baked modes,
manifest, determinism, and one clear error (with nothing left behind) for bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export_helpers import (
    TINY_BAKE, digits_images, leaves_nothing, load_ckpt_model, make_checkpoint, tiny_bundle, tiny_checkpoint,
)
from oat_edge.errors import BundleError, CheckpointError, ConfigError, ModeError
from oat_edge.export import export_bundle, film_vector, load_film_tables, load_manifest, select_entry
from oat_edge.runtime.verify import verify_bundle
from oat_edge.bundle import manifest_files
from oat_edge.fileio import sha256_file
from oat_edge.flops import count_path
from oat_edge.lambda_code import S1, S3_UNSEEN

ALL_LAMBDAS = sorted(set(S1) | set(S3_UNSEEN))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def model(ckpt):
    return load_ckpt_model(ckpt)


@pytest.fixture(scope="module")
def manifest(bundle):
    return load_manifest(bundle)


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def torch_logits(model, x, lam, width):
    model.set_width(width)
    with torch.no_grad():
        return model(torch.from_numpy(x), lam).numpy()


# --- the acceptance: 6 paths, parity at every λ of S1 ∪ S3 for every width -------------------
def test_six_paths_reproduce_the_model_at_every_lambda(bundle, manifest, model):
    """Independent of the export's own gate: rerun every path in onnxruntime on real digits at
    each λ ∈ S1 ∪ S3, fed the FiLM vector from film.npz, against model(x, λ) at that width."""
    assert sorted(e["id"] for e in manifest["paths"]) == sorted(
        f"{bn}_w{w}" for bn in "ca" for w in ("0.5", "0.75", "1"))
    tables = load_film_tables(bundle / "film.npz")
    x = digits_images(64)
    rows = []
    for width in (0.5, 0.75, 1.0):
        diffs = []
        for lam in ALL_LAMBDAS:
            entry = select_entry(manifest, lam, width)
            if entry["kind"] != "path":  # baked modes are checked below
                entry = next(e for e in manifest["paths"] if e["bn"] == ("c" if lam == 0 else "a") and e["width"] == width)
            out = session(bundle / entry["file"]).run(["logits"], {"images": x, "film": film_vector(tables, lam, width)})[0]
            ref = torch_logits(model, x, lam, width)
            diff = float(np.abs(out - ref).max())
            assert diff <= 1e-4, (width, lam, diff)
            assert (out.argmax(1) == ref.argmax(1)).all(), (width, lam)
            diffs.append(diff)
        rows.append((width, diffs, float(np.abs(ref).max())))
    header = "width | " + " ".join(f"{lam:>7g}" for lam in ALL_LAMBDAS)
    print("\nmax |Δlogit| ONNX Runtime vs PyTorch (64 digits test images)\n" + header)
    for width, diffs, scale in rows:
        print(f"{width:5g} | " + " ".join(f"{d:7.1e}" for d in diffs) + f"   (|logit| up to {scale:.1f})")


def test_export_gate_covered_s1_and_s3(manifest):
    for e in manifest["paths"]:
        par = e["parity"]
        assert par["max_abs_diff"] <= 1e-4 and par["top1_agreement"] == 1.0
        if e["bn"] == "a":
            assert set(ALL_LAMBDAS) - {0.0} <= set(par["lambdas"])
            assert any(all(abs(lam - g) > 1e-9 for g in (i * 0.05 for i in range(21))) for lam in par["lambdas"])
        else:
            assert par["lambdas"] == [0.0]
    assert manifest["parity_inputs"]["source"].startswith("digits:test")


def test_paths_are_slimmed_folded_and_take_named_inputs(bundle, manifest, model):
    for e in manifest["paths"]:
        m = onnx.load(bundle / e["file"])
        onnx.checker.check_model(m, full_check=True)
        ops = {n.op_type for n in m.graph.node}
        assert "BatchNormalization" not in ops and ops == set(e["ops"])
        assert [i.name for i in m.graph.input] == ["images", "film"]
        assert [o.name for o in m.graph.output] == ["logits"]
        assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
        assert m.graph.input[1].type.tensor_type.shape.dim[0].dim_value == model.film_size(e["width"]) == e["film_size"]
        convs = [i for i in m.graph.initializer if len(i.dims) == 4]
        first = max(convs, key=lambda t: t.dims[0])  # widest conv = last stage
        assert first.dims[0] == int(32 * e["width"])  # only the active slice is stored
        assert e["folded"]["batchnorm"] == 0 and e["folded"]["affine"] == 0  # every BN follows a conv here
        assert m.opset_import[0].version == manifest["tools"]["opset"] == 17


def test_dynamic_batch(bundle, manifest):
    tables = load_film_tables(bundle / "film.npz")
    e = manifest["paths"][1]
    sess = session(bundle / e["file"])
    x = digits_images(64)
    full = sess.run(None, {"images": x, "film": film_vector(tables, 0.3, e["width"])})[0]
    for b in (1, 5, 64):
        part = sess.run(None, {"images": x[:b], "film": film_vector(tables, 0.3, e["width"])})[0]
        assert part.shape == (b, 10)
        np.testing.assert_allclose(part, full[:b], atol=1e-5)


def test_baked_modes_fold_film_and_match(bundle, manifest, model):
    assert {(b["lam"], b["width"]) for b in manifest["baked"]} == {(lam, w) for lam in TINY_BAKE for w in (0.5, 0.75, 1.0)}
    assert manifest["baked_modes"] == [{"lam": b["lam"], "width": b["width"]} for b in manifest["baked"]]
    x = digits_images(32)
    for b in manifest["baked"]:
        m = onnx.load(bundle / b["file"])
        assert [i.name for i in m.graph.input] == ["images"]  # no film input: FiLM and BN are in the weights
        assert not {"Mul", "Slice", "BatchNormalization"} & {n.op_type for n in m.graph.node}
        out = session(bundle / b["file"]).run(None, {"images": x})[0]
        ref = torch_logits(model, x, b["lam"], b["width"])
        assert np.abs(out - ref).max() <= 1e-4 and b["parity"]["max_abs_diff"] <= 1e-4
        assert b["bn"] == ("c" if b["lam"] == 0 else "a")
    assert select_entry(manifest, 0.3, 0.5)["kind"] == "baked"
    assert select_entry(manifest, 0.3 + 1e-12, 0.5)["kind"] == "baked"
    assert select_entry(manifest, 0.31, 0.5)["id"] == "a_w0.5"
    assert select_entry(manifest, 0.0, 1.0)["id"] == "lam0_w1"


def test_film_vector_equals_the_generators_on_and_off_grid(bundle, model):
    tables = dict(np.load(bundle / "film.npz", allow_pickle=False))
    grid = tables["lambda_grid"]
    assert set(model.train_lambdas) <= set(grid.tolist()) and np.all(np.diff(grid) > 0)
    probes = list(grid[::4]) + [0.0123, 0.123, 0.37, 0.55, 0.618, 0.999, 1.0]
    for w in model.widths:
        ref = model.film_vectors(probes, w).numpy()
        got = np.stack([film_vector(tables, lam, w) for lam in probes])
        assert got.dtype == np.float32 and got.shape == ref.shape
        assert np.abs(got - ref).max() <= 1e-6
        # the npz file object works as well as a dict
    with np.load(bundle / "film.npz", allow_pickle=False) as z:
        assert np.array_equal(film_vector(z, 0.37, 0.75), film_vector(tables, 0.37, 0.75))
    with pytest.raises(ModeError):
        film_vector(tables, 1.5, 0.5)
    with pytest.raises(ModeError):
        film_vector(tables, 0.5, 0.6)


def test_manifest_records_what_the_contract_promises(bundle, manifest, model, ckpt):
    assert manifest["schema"] == "oat-edge/bundle" and manifest["schema_version"] == 1
    assert manifest["source"]["checkpoint_sha256"] == sha256_file(ckpt)
    assert manifest["source"]["method"] == "oats"
    for key in ("oat_edge", "torch", "onnx", "onnxruntime", "onnxsim", "opset"):
        assert manifest["tools"][key]
    assert manifest["io"]["images"] == {"name": "images", "dtype": "float32", "shape": ["batch", 1, 8, 8]}
    assert manifest["io"]["logits"]["shape"] == ["batch", 10]
    assert manifest["batch"] == {"min": 1, "opt": 8, "max": 64}
    assert manifest["model"]["widths"] == [0.5, 0.75, 1.0] and manifest["model"]["value_range"] == [0.0, 1.0]
    for item in manifest_files(manifest):
        assert sha256_file(bundle / item["file"]) == item["sha256"], item
    for e in manifest["paths"]:
        fl = count_path(model, [1, 8, 8], e["width"], 0.0 if e["bn"] == "c" else 1.0)
        assert e["flops"] == fl["conv_linear_flops"] and e["params"] == fl["params"]
        assert e["bytes"] == (bundle / e["file"]).stat().st_size
        assert e["simplified"] is True
    film = manifest["film"]
    assert film["sizes"] == {"0.5": model.film_size(0.5), "0.75": model.film_size(0.75), "1": model.film_size(1.0)}
    assert film["negative_slope"] == 0.01 and film["code_dim"] == 128
    assert manifest["calibration"] is None and manifest["engines"] == []


def test_bundle_files_are_readable_by_others(bundle):
    for p in [bundle, *bundle.rglob("*")]:
        assert os.stat(p).st_mode & 0o004, p


def test_verify_and_inspect_cli(bundle):
    report = verify_bundle(bundle)
    assert len(report["checks"]) == len(json.loads((bundle / "manifest.json").read_text())["parity_reference"]["entries"])
    assert all(c["ok"] for c in report["checks"])
    assert {c["lam"] for c in report["checks"] if c["id"] == "a_w0.5"} >= {0.123}  # an off-grid λ
    r = subprocess.run([sys.executable, "-m", "oat_edge", "verify", str(bundle)], capture_output=True, text=True)
    assert r.returncode == 0 and "bundle verified" in r.stdout
    r = subprocess.run([sys.executable, "-m", "oat_edge", "inspect", str(bundle)], capture_output=True, text=True,
                       env={**os.environ, "COLUMNS": "160"})
    assert r.returncode == 0, r.stderr
    for text in ("a_w0.75", "lam0.3_w1", "film.npz", "engines: none", "calibration: none"):
        assert text in r.stdout


# --- determinism ----------------------------------------------------------------------------
def test_exporting_twice_gives_byte_identical_files(bundle, ckpt, tmp_path):
    """A second export in a fresh process (through the CLI) writes the same bytes: ONNX files,
    FiLM tables and the parity reference of the paths it shares with the first export."""
    out = tmp_path / "again"
    r = subprocess.run([sys.executable, "-m", "oat_edge", "export", str(ckpt), "-o", str(out), "--widths", "0.5",
                        "--bake", "0.3", "--parity-images", "16", "--tensorrt", "off", "--no-progress"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    second = load_manifest(out)
    for rel in ("paths/c_w0.5.onnx", "paths/a_w0.5.onnx", "baked/lam0.3_w0.5.onnx"):
        assert (out / rel).read_bytes() == (bundle / rel).read_bytes(), rel
    first = load_manifest(bundle)
    assert {e["id"]: e["sha256"] for e in second["paths"]} == {e["id"]: e["sha256"] for e in first["paths"] if e["width"] == 0.5}
    t1, t2 = load_film_tables(bundle / "film.npz"), load_film_tables(out / "film.npz")
    assert t2["widths"].tolist() == [0.5]
    for key in set(t2) - {"widths"}:
        assert np.array_equal(t1[key], t2[key]), key


def test_film_tables_file_is_reproducible(bundle, tmp_path):
    from oat_edge.bundle.film import save_film_tables

    tables = load_film_tables(bundle / "film.npz")
    save_film_tables(tmp_path / "film.npz", tables)
    assert (tmp_path / "film.npz").read_bytes() == (bundle / "film.npz").read_bytes()


# --- bad input: one clear error, nothing left behind ----------------------------------------
def test_untrained_width(ckpt, tmp_path):
    with pytest.raises(ModeError, match="never trained"):
        export_bundle(ckpt, tmp_path / "b", widths=[0.5, 0.6], tensorrt="off", progress=False)
    assert leaves_nothing(tmp_path, "b")


@pytest.mark.parametrize("method,film", [("pgd-at", False), ("pgd-ats", False), ("oats", False)])
def test_checkpoints_without_a_lambda_knob_are_refused(tmp_path, method, film):
    ckpt = make_checkpoint(tmp_path / "c.pt", arch_kwargs={"channels": [8, 16, 32], "film": film}, method=method)
    with pytest.raises(CheckpointError, match="OAT/OATS"):
        export_bundle(ckpt, tmp_path / "b", tensorrt="off", progress=False)
    assert leaves_nothing(tmp_path, "b")


def test_corrupt_and_foreign_checkpoints(ckpt, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(ckpt.read_bytes()[:5000])
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(3)}, plain)
    for path in (bad, plain, tmp_path / "missing.pt"):
        with pytest.raises(CheckpointError):
            export_bundle(path, tmp_path / "b", tensorrt="off", progress=False)
        assert leaves_nothing(tmp_path, "b")
    r = subprocess.run([sys.executable, "-m", "oat_edge", "export", str(bad), "-o", str(tmp_path / "b")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "error:" in r.stderr
    assert leaves_nothing(tmp_path, "b")


def test_output_that_cannot_be_written(ckpt, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(BundleError, match="cannot write"):
        export_bundle(ckpt, blocker / "bundle", tensorrt="off", progress=False)
    with pytest.raises(BundleError, match="not a folder"):
        export_bundle(ckpt, blocker, tensorrt="off", progress=False, force=True)
    assert blocker.read_text() == "not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_existing_output_needs_force(bundle, ckpt):
    before = (bundle / "manifest.json").read_bytes()
    with pytest.raises(BundleError, match="--force"):
        export_bundle(ckpt, bundle, tensorrt="off", progress=False)
    assert (bundle / "manifest.json").read_bytes() == before


@pytest.mark.parametrize("kwargs,error", [
    ({"opset": 9}, ConfigError), ({"batch": "8:1:64"}, ConfigError), ({"batch": "1:8"}, ConfigError),
    ({"bake": [1.5]}, ModeError), ({"tensorrt": "maybe"}, ConfigError), ({"lambda_grid": [0.5, float("nan")]}, ModeError),
])
def test_bad_arguments(ckpt, tmp_path, kwargs, error):
    with pytest.raises(error):
        export_bundle(ckpt, tmp_path / "b", progress=False, **{"tensorrt": "off", **kwargs})
    assert leaves_nothing(tmp_path, "b")


def test_tensorrt_on_without_tensorrt_fails_before_any_work(ckpt, tmp_path):
    pytest.importorskip("numpy")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    with pytest.raises(ConfigError, match="TensorRT is not installed"):
        export_bundle(ckpt, tmp_path / "b", tensorrt="on", progress=False)
    assert leaves_nothing(tmp_path, "b")


def test_failed_parity_gate_writes_nothing(ckpt, tmp_path, monkeypatch):
    """Fault injection: a FiLM table that disagrees with the generators (here: γ/β shifted by
    1e-3) must stop the export with a report naming the paths and λ, and leave no folder."""
    import oat_edge.export.targets.onnx as onnx_target

    real = onnx_target.film_vector
    monkeypatch.setattr(onnx_target, "film_vector", lambda t, lam, w: real(t, lam, w) + np.float32(1e-3))
    with pytest.raises(BundleError, match=r"parity gate failed.*a_w0\.5.*λ="):
        export_bundle(ckpt, tmp_path / "b", widths=[0.5], tensorrt="off", progress=False, parity_images=8)
    assert leaves_nothing(tmp_path, "b")


# --- integrity --------------------------------------------------------------------------------
@pytest.fixture
def copy_of_bundle(bundle, tmp_path):
    import shutil

    dest = tmp_path / "copy"
    shutil.copytree(bundle, dest)
    return dest


@pytest.mark.parametrize("target", ["paths/a_w0.5.onnx", "film.npz", "baked/lam0.3_w1.onnx", "parity.npz"])
def test_tampered_files_are_refused(copy_of_bundle, target):
    f = copy_of_bundle / target
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        load_manifest(copy_of_bundle)
    with pytest.raises(BundleError, match="sha256"):
        verify_bundle(copy_of_bundle)
    r = subprocess.run([sys.executable, "-m", "oat_edge", "verify", str(copy_of_bundle)], capture_output=True, text=True)
    assert r.returncode == 2 and target in r.stderr
    load_manifest(copy_of_bundle, verify_hashes=False)  # structure is still readable without hashes


def test_missing_file_unknown_schema_and_escaping_paths(copy_of_bundle):
    mpath = copy_of_bundle / "manifest.json"
    original = json.loads(mpath.read_text())
    (copy_of_bundle / "paths/c_w1.onnx").unlink()
    with pytest.raises(BundleError, match="missing"):
        load_manifest(copy_of_bundle, verify_hashes=False)
    for change, pattern in [({"schema_version": 2}, "schema version 2"), ({"schema": "other"}, "not an oat-edge bundle")]:
        mpath.write_text(json.dumps({**original, **change}))
        with pytest.raises(BundleError, match=pattern):
            load_manifest(copy_of_bundle)
    evil = json.loads(json.dumps(original))
    evil["paths"][0]["file"] = "../../etc/passwd"
    mpath.write_text(json.dumps(evil))
    with pytest.raises(BundleError, match="outside the bundle"):
        load_manifest(copy_of_bundle)
    mpath.write_text("{not json")
    with pytest.raises(BundleError, match="JSON"):
        load_manifest(copy_of_bundle)
    with pytest.raises(BundleError, match="does not exist"):
        load_manifest(copy_of_bundle / "nope")


def test_bundle_reader_imports_without_torch():
    code = ("import sys, oat_edge.bundle, oat_edge.export, oat_edge.export.cli, "
            "oat_edge.export.film_tables, oat_edge.export.targets, oat_edge.runtime.verify, oat_edge.bench.cli, "
            "oat_edge.export.targets.tensorrt, oat_edge.trt_engine_build, oat_edge.export.report, oat_edge.export.opcheck; "
            "assert 'torch' not in sys.modules and 'onnx' not in sys.modules, sorted(sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
