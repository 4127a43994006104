"""Background baking (oat_edge.runtime.bake / bakery): the numpy + onnx fold of a mode's FiLM
into its width's BN path equals the exported baked path, the runtime serves a held mode from a
parity-checked baked session, the LRU cache is bounded, and graphs or sessions that do not fold
or do not match stay on the FiLM-as-input path."""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from runtime_support import BAKED, bundle_path, reference_logits, sample_images

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

FIXTURES = Path(__file__).parent / "fixtures"


def _runtime(bundle, **kw):
    from oat_edge.runtime import Runtime

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unsigned test bundle
        return Runtime(bundle, backend="onnxruntime", threads=1, impl="python", **kw)


def _session(data):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("width", [0.5, 1.0])
def test_baking_a_bn_path_gives_the_exported_baked_graph(width):
    from oat_edge.bundle.film import film_vector
    from oat_edge.runtime.bake import bake_graph, load_path_model
    from oat_edge.bundle.safe_files import load_npz

    b = bundle_path()
    manifest = json.loads((b / "manifest.json").read_text())
    path = next(p for p in manifest["paths"] if p["bn"] == "a" and p["width"] == width)
    exported = next(p for p in manifest["baked"] if p["lam"] == BAKED[0] and p["width"] == width)
    vec = film_vector(load_npz(b / "film.npz"), BAKED[0], width)
    baked = bake_graph(load_path_model(b / path["file"], path["sha256"]), vec)
    ops = [n.op_type for n in baked.model.graph.node]
    want_ops = [n.op_type for n in onnx.load(str(b / exported["file"])).graph.node]
    assert ops == want_ops  # every FiLM site folded: no Slice/Reshape/Mul/Add of the FiLM left
    n_sites = load_npz(b / "film.npz")[f"sites_w{width:g}"].shape[0]
    assert baked.kept_ops == 0 and baked.folded_sites == 2 * n_sites  # one Mul + one Add per site
    assert [i.name for i in baked.model.graph.input] == ["images"]
    x = sample_images(16, seed=3)
    got = _session(baked.to_bytes()).run(None, {"images": x})[0]
    want = _session(str(b / exported["file"])).run(None, {"images": x})[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    film_path = _session(str(b / path["file"])).run(None, {"images": x, "film": vec})[0]
    np.testing.assert_allclose(got, film_path, rtol=0, atol=1e-5)
    # Only the convolutions' weights and biases depend on the mode (what a TensorRT refit rewrites).
    assert baked.changed and all(k.endswith((".weight", ".bias")) for k in baked.changed)


def test_held_modes_are_served_baked_after_their_bake():
    rt = _runtime(bundle_path(), bake=True)
    try:
        x = sample_images(4, seed=5)
        for lam, width in [(0.3, 1.0), (0.123, 0.5), (0.0, 0.75)]:  # grid BN_a, off-grid, BN_c
            rt.set_mode(lam, width)
            assert rt.wait_baked(lam, width, timeout=60)
            assert rt.baked_now()
            out, mode = rt.infer_with_mode(x)
            assert (mode.lam, mode.width) == (lam, width)
            np.testing.assert_allclose(out, reference_logits(x, lam, width), rtol=0, atol=1e-4)
        rt.set_mode(BAKED[0], 1.0)  # an exported baked mode is not baked again
        assert rt.wait_baked(BAKED[0], 1.0, timeout=1) and rt.baked_now()
        rt.set_mode(0.3, 1.0)  # cached: a hit, no new bake
        stats = rt.bake_stats()
        assert stats["status"] == "on" and stats["hits"] >= 1 and stats["bake_failures"] == 0
        assert stats["bakes"] >= 3 and stats["cached"] == stats["bakes"] - stats["evictions"]
        assert stats["memory_bytes"] > 0 and stats["bake_seconds"] > 0
        assert rt.describe()["bake"] == "on"
    finally:
        rt.close()


def test_baked_onnx_gives_any_mode_as_a_standalone_graph():
    from oat_edge.errors import ModeError

    rt = _runtime(bundle_path())  # baking off: the export needs only the BN paths
    try:
        x = sample_images(8, seed=11)
        for lam, width in [(0.123, 0.5), (0.0, 1.0), (1.0, 0.75)]:  # off-grid BN_a, BN_c, an exported mode
            sess = _session(rt.baked_onnx(lam, width))
            assert [i.name for i in sess.get_inputs()] == ["images"]
            np.testing.assert_allclose(sess.run(None, {"images": x})[0], reference_logits(x, lam, width),
                                       rtol=0, atol=1e-4)
        with pytest.raises(ModeError, match="λ"):
            rt.baked_onnx(1.5, 1.0)
        with pytest.raises(ModeError, match="width"):
            rt.baked_onnx(0.5, 0.6)
    finally:
        rt.close()


def test_the_cache_is_lru_and_bounded_by_count_and_memory():
    from oat_edge.runtime.bakery import BakeConfig

    rt = _runtime(bundle_path(), bake=BakeConfig(capacity=2), mode=(0.0, 0.5))
    try:
        assert rt.wait_baked(0.0, 0.5, timeout=60)  # the initial mode's background bake, out of the way
        for lam in (0.3, 0.4):
            assert rt.bake(lam, 0.5)
        rt.set_mode(0.3, 0.5)  # touch 0.3: 0.4 becomes the least recently used
        assert rt.bake(0.5, 0.5)
        stats = rt.bake_stats()
        assert stats["cached"] == 2 and stats["evictions"] == 2
        keys = {(round(e.lam, 6), e.width_idx) for e in rt._modes.bakery.cached()}
        assert keys == {(0.3, 0), (0.5, 0)}
    finally:
        rt.close()
    one = None
    rt = _runtime(bundle_path(), bake=BakeConfig(capacity=8), mode=(0.3, 1.0))
    try:
        assert rt.wait_baked(0.3, 1.0, timeout=60)
        one = rt.bake_stats()["memory_bytes"]
    finally:
        rt.close()
    # A budget for 1.5 baked modes of width 1 keeps one of them.
    rt = _runtime(bundle_path(), bake=BakeConfig(capacity=8, memory_mb=1.5 * one / 2**20), mode=(0.3, 1.0))
    try:
        assert rt.wait_baked(0.3, 1.0, timeout=60)
        for lam in (0.3, 0.4, 0.5):
            assert rt.bake(lam, 1.0)
        stats = rt.bake_stats()
        assert stats["cached"] == 1 and stats["evictions"] == 2 and stats["memory_bytes"] <= 1.5 * one
    finally:
        rt.close()


def test_a_baked_session_of_the_wrong_mode_fails_parity_and_is_not_served():
    """The parity gate with a real session of another mode standing in for a bad bake."""
    from oat_edge.bundle.film import film_vector
    from oat_edge.runtime.bake import bake_graph, load_path_model
    from oat_edge.runtime.bakery import BakeConfig, Bakery
    from oat_edge.bundle.safe_files import load_npz

    b = bundle_path()
    manifest = json.loads((b / "manifest.json").read_text())
    entry = next(p for p in manifest["paths"] if p["bn"] == "a" and p["width"] == 1.0)
    model = load_path_model(b / entry["file"])
    arrays = load_npz(b / "film.npz")
    film_sess = _session(str(b / entry["file"]))

    class WrongModeBaker:
        def bake(self, key, lam, wi, index):  # bakes λ + 0.3 instead of λ
            sess = _session(bake_graph(model, film_vector(arrays, lam + 0.3, 1.0)).to_bytes())
            return (lambda x: sess.run(None, {"images": x})[0]), 1, {}

        def reference(self, index, x, lam, wi):
            return film_sess.run(None, {"images": x, "film": film_vector(arrays, lam, 1.0)})[0]

        def held(self):
            return "k"

    bakery = Bakery(WrongModeBaker(), sample_images(8), 1e-4, BakeConfig(), 16)
    try:
        bakery.request("k", 0.4, 0, 0)
        assert not bakery.wait("k", timeout=60)
        assert bakery.lookup("k") is None
        assert "failed parity" in bakery.failure("k")
        assert bakery.stats()["parity_failures"] == 1
    finally:
        bakery.close()


def test_a_graph_baking_does_not_know_keeps_the_film_path(tmp_path):
    """An older or foreign BN path (here: the FiLM vector passes through an Abs before it is
    sliced) is not baked; the mode keeps running, correctly, on the FiLM-as-input path."""
    from onnx import helper

    b = tmp_path / "bundle"
    shutil.copytree(bundle_path(), b)
    manifest = json.loads((b / "manifest.json").read_text())
    entry = next(p for p in manifest["paths"] if p["bn"] == "a" and p["width"] == 1.0)
    model = onnx.load(str(b / entry["file"]))
    for node in model.graph.node:
        for k, name in enumerate(node.input):
            if name == "film":
                node.input[k] = "film_abs"
    model.graph.node.insert(0, helper.make_node("Abs", ["film"], ["film_abs"], name="Abs_x"))
    data = model.SerializeToString()
    (b / entry["file"]).write_bytes(data)
    entry["sha256"], entry["bytes"] = hashlib.sha256(data).hexdigest(), len(data)
    (b / "manifest.json").write_text(json.dumps(manifest))
    rt = _runtime(b, bake=True, mode=(0.3, 1.0))
    try:
        assert not rt.wait_baked(0.3, 1.0, timeout=60)
        assert not rt.baked_now()
        assert "Abs" in rt._modes.bakery.failure(rt._modes.mode_bake_key(0.3, 1.0, None)[3])
        x = sample_images(2)
        vec = np.abs(rt.film_vector(0.3, 1.0))
        want = _session(data).run(None, {"images": x, "film": vec})[0]
        np.testing.assert_allclose(rt.infer(x), want, rtol=0, atol=1e-6)
    finally:
        rt.close()


def _with_parity_file(tmp_path, images=None):
    """A copy of the test bundle whose parity.npz holds ``images`` (re-hashed), or none at all."""
    from oat_edge.bundle.film import write_npz

    b = tmp_path / "bundle"
    shutil.copytree(bundle_path(), b)
    manifest = json.loads((b / "manifest.json").read_text())
    ref = manifest["parity_reference"]
    if images is None:
        del manifest["parity_reference"]
    else:
        write_npz(b / ref["file"], {"images": images})
        data = (b / ref["file"]).read_bytes()
        ref["sha256"], ref["bytes"] = hashlib.sha256(data).hexdigest(), len(data)
    (b / "manifest.json").write_text(json.dumps(manifest))
    return b


@pytest.mark.parametrize("case", ["wrong-shape", "missing"])
def test_random_parity_images_are_announced_once_with_the_cause(tmp_path, case):
    """Without usable reference images the bake's parity check runs on random ones: the
    runtime says so once, naming why."""
    from oat_edge.errors import FallbackWarning
    from oat_edge.runtime import Runtime
    from oat_edge.bundle.signature import UnsignedBundleWarning

    b = _with_parity_file(tmp_path, np.zeros((2, 3, 4, 4), np.float32) if case == "wrong-shape" else None)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        warnings.simplefilter("ignore", UnsignedBundleWarning)
        rt = Runtime(b, backend="onnxruntime", threads=1, impl="python", bake=True)
    try:
        said = [str(w.message) for w in seen if issubclass(w.category, FallbackWarning)]
        assert len(said) == 1, said
        assert "random images" in said[0]
        assert ("shape [2, 3, 4, 4]" if case == "wrong-shape" else "no parity reference") in said[0]
        mode = rt.mode
        assert rt.wait_baked(mode.lam, mode.width, timeout=60), rt.bake_stats()  # baking still works
    finally:
        rt.close()


def test_legacy_bundle_bakes():
    rt = _runtime(FIXTURES / "legacy_bundle", bake=True)
    try:
        mode = rt.mode
        assert rt.wait_baked(mode.lam, mode.width, timeout=60), rt.bake_stats()
    finally:
        rt.close()


def test_bake_config_is_checked():
    from oat_edge.errors import ConfigError
    from oat_edge.runtime.bakery import BakeConfig

    for bad in ({"capacity": 0}, {"capacity": 1.5}, {"memory_mb": 0}, {"memory_mb": -1.0}):
        with pytest.raises(ConfigError):
            BakeConfig(**bad)


def test_an_unclosed_runtime_is_collected_and_its_worker_stops():
    import gc
    import time
    import weakref

    rt = _runtime(bundle_path(), bake=True)
    thread = rt._modes.bakery._thread
    ref = weakref.ref(rt)
    del rt
    deadline = time.monotonic() + 20
    while ref() is not None and time.monotonic() < deadline:  # the worker may hold it for one bake
        gc.collect()
        time.sleep(0.05)
    assert ref() is None
    thread.join(20)
    assert not thread.is_alive()
