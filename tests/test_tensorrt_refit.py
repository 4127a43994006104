"""TensorRT refit (oat_edge.runtime.backends.tensorrt.refit) against the TEST DOUBLES of
tests/trt_standins.py — not TensorRT: TensorRT cannot run here. What is checked is oat-edge's
side: the engine is built with BuilderFlag.REFIT from a baked graph, the Refitter is given
exactly the weights a bake changes (by their ONNX names), missing or refused weights are one
clear DeviceError, a copy that frames still use is never refitted, and the swap happens only
after a successful refit (and an accepted check)."""

from __future__ import annotations

import functools
import json
import threading
import time

import numpy as np
import pytest

from runtime_support import bundle_path, run_switcher_and_clients
from trt_standins import install_python_standins

pytest.importorskip("onnx")


def _baked(lam, width=1.0):
    from oat_edge.bundle.film import film_vector
    from oat_edge.runtime.bake import bake_graph, load_path_model
    from oat_edge.safe_files import load_npz

    b = bundle_path()
    manifest = json.loads((b / "manifest.json").read_text())
    entry = next(p for p in manifest["paths"] if p["bn"] == "a" and p["width"] == width)
    return bake_graph(load_path_model(b / entry["file"]), film_vector(load_npz(b / "film.npz"), lam, width))


@pytest.fixture
def refitter(monkeypatch):
    from oat_edge.export.tensorrt_builder import TensorRTEngineBuilder
    from oat_edge.runtime.backends.tensorrt.refit import ModeRefitter

    world = install_python_standins(monkeypatch)
    template = _baked(0.3)
    builder = TensorRTEngineBuilder()
    plan, _cache = builder.build(template.to_bytes(), {"images": ((1, 1, 8, 8), (4, 1, 8, 8), (16, 1, 8, 8))},
                                 "fp32", refit=True)
    assert "REFIT" in world.builder_configs[-1].flags
    import tensorrt as trt  # the stand-in

    return world, template, ModeRefitter(trt, plan, key=0.3)


def test_refit_rewrites_the_standby_copy_then_swaps(refitter):
    world, template, r = refitter
    old_live = r.live
    for name, value in template.changed.items():
        np.testing.assert_array_equal(old_live.engine.weights[name], value)
    new = _baked(0.7)
    assert set(new.changed) == set(template.changed)  # same names for every mode of a width
    assert r.refit(0.7, new.changed)
    assert r.key == 0.7 and r.live is not old_live and r.standby is old_live
    for name, value in new.changed.items():
        np.testing.assert_array_equal(r.live.engine.weights[name], value)
        np.testing.assert_array_equal(old_live.engine.weights[name], template.changed[name])  # untouched
    assert r.refits == 1 and world.violations == []


def test_a_copy_in_use_is_not_refitted_until_its_frames_finish(refitter):
    world, _template, r = refitter
    held = r.acquire()  # a frame running on the live copy
    assert r.refit(0.5, _baked(0.5).changed)  # the standby was free: refitted and swapped at once
    assert r.standby is held and r.key == 0.5
    second = _baked(0.9).changed
    done = threading.Event()
    t = threading.Thread(target=lambda: (r.refit(0.9, second), done.set()))
    t.start()
    time.sleep(0.2)
    assert not done.is_set() and r.key == 0.5  # waiting for the frame on `held`
    name = next(iter(second))
    assert not np.array_equal(held.engine.weights[name], second[name])
    r.release(held)
    t.join(10)
    assert done.is_set() and r.live is held and r.key == 0.9
    np.testing.assert_array_equal(held.engine.weights[name], second[name])
    assert world.violations == []


def test_missing_refused_and_vetoed_weights_leave_the_live_mode(refitter):
    from oat_edge.errors import DeviceError

    _world, template, r = refitter
    live = r.live
    new = _baked(0.7).changed
    weight = next(k for k in new if k.endswith(".weight"))
    with pytest.raises(DeviceError, match="not given"):
        r.refit(0.7, {weight: new[weight]})  # its bias must come with it
    with pytest.raises(DeviceError, match="refused"):
        r.refit(0.7, {"no.such.weight": np.zeros(3, np.float32)})
    with pytest.raises(DeviceError, match="refused"):
        r.refit(0.7, {weight: np.zeros(3, np.float32)})  # another size
    assert not r.refit(0.7, new, check=lambda engine, context: False)  # e.g. parity failed
    assert r.live is live and r.key == 0.3 and r.refits == 0


# --- the runtime: background baking by refit (TensorRTRunner.bake_mode) ----------------------------
@pytest.fixture
def trt_bundle(tmp_path_factory, tmp_path, monkeypatch):
    """The tiny bundle with fp32 engines from the NUMERIC stand-in: every engine computes its ONNX
    graph on onnxruntime, so the TensorRT backend's logits can be checked against onnxruntime's."""
    import shutil

    from export_helpers import tiny_bundle
    from oat_edge.export.tensorrt_builder import build_engines

    dest = tmp_path / "bundle"
    shutil.copytree(tiny_bundle(tmp_path_factory), dest)
    world = install_python_standins(monkeypatch, numeric=True)
    build_engines(dest, precision="fp32", batch="1:4:8", progress=False)
    return dest, world


def _reference(bundle, lam, width, x):
    from oat_edge.runtime import Runtime

    with Runtime(bundle, backend="onnxruntime") as ort_rt:
        ort_rt.set_mode(lam, width)
        return ort_rt.infer(x)


def test_tensorrt_runtime_bakes_held_modes_by_refitting_one_engine_per_width(trt_bundle):
    from oat_edge.runtime import Runtime

    bundle, world = trt_bundle
    x = np.random.default_rng(1).random((5, 1, 8, 8), dtype=np.float32)
    lams = [0.45, 0.7, 0.9]  # not exported baked: the FiLM path until baked
    refs = {lam: _reference(bundle, lam, 1.0, x) for lam in lams}
    with Runtime(bundle, backend="tensorrt", bake=True) as rt:
        assert rt.bake_status == "on" and rt.backend.executor == "pycuda"
        builds = len(world.builder_configs)
        rt.set_mode(0.45, 1.0)
        np.testing.assert_allclose(rt.infer(x), refs[0.45], rtol=1e-4, atol=1e-4)  # the FiLM-path engine
        assert rt.wait_baked(0.45, 1.0, timeout=60) and rt.baked_now()
        assert len(world.builder_configs) == builds + 1 and "REFIT" in world.builder_configs[-1].flags
        np.testing.assert_allclose(rt.infer(x), refs[0.45], rtol=1e-4, atol=1e-4)  # the refittable engine
        rt.set_mode(0.7, 1.0)
        assert rt.wait_baked(0.7, 1.0, timeout=60)
        np.testing.assert_allclose(rt.infer(x), refs[0.7], rtol=1e-4, atol=1e-4)
        assert len(world.builder_configs) == builds + 1  # a refit, not a second build
        refit = rt.backend.describe()["refit"]
        (pid, r), = refit.items()
        assert r["refits"] == 1 and len(set(r["modes"])) == 2  # both copies serve a mode (0.45 and 0.7)
        rt.set_mode(0.45, 1.0)  # still held by the other copy: a hit, no refit
        assert rt.baked_now() and rt.backend.describe()["refit"][pid]["refits"] == 1
        np.testing.assert_allclose(rt.infer(x), refs[0.45], rtol=1e-4, atol=1e-4)  # 0.45's copy: used last
        rt.set_mode(0.9, 1.0)  # rewrites the copy used least recently (0.7's): that cache entry is dropped
        assert rt.wait_baked(0.9, 1.0, timeout=60)
        np.testing.assert_allclose(rt.infer(x), refs[0.9], rtol=1e-4, atol=1e-4)
        stats = rt.bake_stats()
        assert stats["bakes"] == 3 and stats["evictions"] == 1 and stats["parity_failures"] == 0
        assert rt.bake(0.45, 1.0) is True  # cached: nothing to do
        rt.set_mode(0.7, 1.0)  # evicted: the FiLM path until it is baked again (a refit of 0.45's copy)
        np.testing.assert_allclose(rt.infer(x), refs[0.7], rtol=1e-4, atol=1e-4)
        assert rt.wait_baked(0.7, 1.0, timeout=60)
        np.testing.assert_allclose(rt.infer(x), refs[0.7], rtol=1e-4, atol=1e-4)
        assert rt.bake_stats()["bakes"] == 4 and rt.backend.describe()["refit"][pid]["refits"] == 3
    assert world.violations == []


def test_tensorrt_frames_run_wholly_in_one_mode_while_engines_are_refitted(trt_bundle):
    """Switching among four off-grid λ at one width keeps the refitter busy (each bake evicts
    another mode's copy); every frame's logits match onnxruntime for the mode it reports."""
    from oat_edge.runtime import Runtime

    bundle, world = trt_bundle
    lams = [0.35, 0.55, 0.75, 0.95]
    rng = np.random.default_rng(2)
    xs = [rng.random((int(rng.integers(1, 5)), 1, 8, 8), dtype=np.float32) for _ in range(6)]
    refs = {(lam, i): _reference(bundle, lam, 0.5, x) for lam in lams for i, x in enumerate(xs)}
    rt = Runtime(bundle, backend="tensorrt", bake=True)
    stop, errors, frames = threading.Event(), [], []

    def switcher():
        i = 0
        while not stop.is_set():
            rt.set_mode(lams[i % len(lams)], 0.5)
            i += 1
            time.sleep(0.003)

    def client(seed):
        r = np.random.default_rng(seed)
        try:
            for _ in range(60):
                i = int(r.integers(len(xs)))
                out, mode = rt.infer_with_mode(xs[i])
                np.testing.assert_allclose(out, refs[(mode.lam, i)], rtol=1e-4, atol=1e-4)
                frames.append(rt.baked_now())
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    run_switcher_and_clients(switcher, [functools.partial(client, s) for s in range(3)], stop)
    stats = rt.bake_stats()
    refits = rt.backend.describe()["refit"]
    rt.close()
    assert errors == [] and len(frames) == 180
    assert stats["bakes"] >= 2 and sum(r["refits"] for r in refits.values()) >= 1
    assert world.violations == []


def test_tensorrt_baking_is_off_without_pycuda(trt_bundle, monkeypatch):
    import sys

    from oat_edge.runtime import Runtime

    bundle, _world = trt_bundle
    from oat_edge.runtime.backends.tensorrt import TensorRTRunner

    monkeypatch.setattr(TensorRTRunner, "supports_baking", property(lambda self: False))
    with Runtime(bundle, backend="tensorrt", bake=True) as rt:
        assert rt.bake_status.startswith("off") and "pycuda" in rt.bake_status
        rt.set_mode(0.45, 1.0)
        assert not rt.baked_now()
    assert "pycuda.driver" in sys.modules
