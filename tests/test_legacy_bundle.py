"""A bundle exported by an earlier oat-edge (tests/fixtures/legacy_bundle, written by
tests/fixtures/make_legacy_bundle.py at commit f948174, before the bundle format moved into the
core) still loads, verifies and runs with the same outputs, mode -> file choices and latency
profile as it did then."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from runtime_support import impl_params
from fixture_data import load_expected

FIXTURES = Path(__file__).parent / "fixtures"
BUNDLE = FIXTURES / "legacy_bundle"


@pytest.fixture(scope="module")
def expected():
    return load_expected("legacy")


@pytest.mark.parametrize("impl", impl_params())
def test_legacy_bundle_runs_with_the_same_outputs(expected, impl):
    from oat_edge.runtime import Runtime

    info = expected["info"]
    with Runtime(BUNDLE, backend="onnxruntime", threads=1, impl=impl) as rt:
        for i, (lam, width) in enumerate(info["modes"]):
            rt.set_mode(lam, width)
            np.testing.assert_allclose(rt.infer(expected["images"]), expected[f"{impl}_{i}"], rtol=0, atol=1e-6)
            np.testing.assert_allclose(rt.film_vector(lam, width), expected[f"film_{i}"], rtol=0, atol=1e-6)
            assert rt.path_for(lam, width) == info["paths"][i]


def test_legacy_bundle_mode_rule_profile_and_verify(expected):
    from oat_edge.bundle import load_manifest, read_latency_profile, select_entry
    from oat_edge.runtime.verify import verify_bundle

    info = expected["info"]
    manifest = load_manifest(BUNDLE)
    for (lam, width), (eid, kind) in zip(info["modes"], info["entries"]):
        e = select_entry(manifest, lam, width)
        assert [e["id"], e["kind"]] == [eid, kind]
    profile = read_latency_profile(BUNDLE, "cpu-fixture-onnxruntime-t1")
    profile.pop("file")
    assert profile == info["profile"]
    report = verify_bundle(BUNDLE, threads=1)
    assert [[c["id"], c["lam"], c["ok"]] for c in report["checks"]] == info["verify"]


def test_legacy_bundle_reads_as_the_typed_manifest():
    """``read_manifest`` gives the same facts as the validated dict, typed, with the documented
    defaults of the fields an older bundle leaves out."""
    from oat_edge.bundle import Manifest, load_manifest, read_manifest

    raw = load_manifest(BUNDLE)
    m = read_manifest(BUNDLE)
    assert isinstance(m, Manifest) and m.raw == raw
    assert m.model.widths == tuple(raw["model"]["widths"]) and m.model.input_shape == tuple(raw["model"]["input_shape"])
    assert (m.io.images, m.io.film, m.io.logits) == ("images", "film", "logits")
    assert (m.batch.min, m.batch.opt, m.batch.max) == (raw["batch"]["min"], raw["batch"]["opt"], raw["batch"]["max"])
    assert [(e.kind, e.id, e.file, e.sha256) for e in m.entries] == \
        [("path", e["id"], e["file"], e["sha256"]) for e in raw["paths"]] + \
        [("baked", e["id"], e["file"], e["sha256"]) for e in raw.get("baked") or []]
    assert all(e.precision == "fp32" for e in m.entries)  # absent in this bundle: fp32
    assert [e.lam for e in m.baked] == [e["lam"] for e in raw.get("baked") or []]
    assert m.film.lambda_encoding == "ro" and "lambda_encoding" not in raw["film"]  # absent: "ro"
    assert m.film.sizes == {float(k): v for k, v in raw["film"]["sizes"].items()}


def test_legacy_bundle_is_unchanged_by_loading(tmp_path):
    """Loading must not need to rewrite anything (the fixture stays byte-identical)."""
    copy = tmp_path / "b"
    shutil.copytree(BUNDLE, copy)
    before = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    from oat_edge.runtime import Runtime

    Runtime(copy, backend="onnxruntime", threads=1).close()
    after = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    assert before == after


def _shape(obj):
    """The structure of a JSON value: dict keys in order, list lengths, value types."""
    if isinstance(obj, dict):
        return [(k, _shape(v)) for k, v in obj.items()]
    if isinstance(obj, list):
        return [_shape(v) for v in obj]
    return type(obj).__name__ if not isinstance(obj, (int, float)) or isinstance(obj, bool) else "number"


@pytest.mark.slow
def test_export_today_writes_the_legacy_layout(tmp_path):
    """Exporting the fixture's checkpoint with today's code gives a bundle of the same layout:
    the same files, the same manifest structure (keys in the same order), the same arrays in
    film.npz and parity.npz. (At the change that moved the format into the core, every file was
    byte-identical and the manifest differed only in timings and the checkpoint's sha256; values
    are not compared here, so that a change of the models does not fail this test.)"""
    import sys

    sys.path.insert(0, str(FIXTURES))
    try:
        import make_legacy_bundle as M
    finally:
        sys.path.remove(str(FIXTURES))
    from oat_edge.export import export_bundle

    out = export_bundle(M.legacy_checkpoint(tmp_path / "ckpt.pt"), tmp_path / "b", **M.EXPORT_KW)
    files = lambda root: sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()  # noqa: E731
                                and not p.relative_to(root).as_posix().startswith("latency/"))
    assert files(out) == files(BUNDLE)
    old, new = (json.loads((b / "manifest.json").read_text()) for b in (BUNDLE, out))
    # Added after the fixture was written: the preprocessing contract (older bundles lack it and
    # read as its documented default, see tests/test_frames.py).
    assert "preprocessing" not in old and new.pop("preprocessing")["color"] == "grey"
    for m in (old, new):
        m["export"].pop("seconds_per_file")  # keyed by file, values only
        m["source"].pop("arch_kwargs")  # the checkpoint's model arguments, not the bundle format
    assert _shape(new) == _shape(old)
    for name in ("film.npz", "parity.npz"):
        with np.load(BUNDLE / name) as a, np.load(out / name) as b:
            assert {k: (a[k].dtype, a[k].shape) for k in a.files} == {k: (b[k].dtype, b[k].shape) for k in b.files}
