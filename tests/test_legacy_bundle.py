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

FIXTURES = Path(__file__).parent / "fixtures"
BUNDLE = FIXTURES / "legacy_bundle"


@pytest.fixture(scope="module")
def expected():
    with np.load(FIXTURES / "legacy_expected.npz") as z:
        data = {k: z[k] for k in z.files}
    data["info"] = json.loads(bytes(data["info"]).decode())
    return data


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
    from oat_edge.export import load_manifest, select_entry, verify_bundle
    from oat_edge.runtime.device import read_latency_profile

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


def test_legacy_bundle_is_unchanged_by_loading(tmp_path):
    """Loading must not need to rewrite anything (the fixture stays byte-identical)."""
    copy = tmp_path / "b"
    shutil.copytree(BUNDLE, copy)
    before = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    from oat_edge.runtime import Runtime

    Runtime(copy, backend="onnxruntime", threads=1).close()
    after = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    assert before == after
