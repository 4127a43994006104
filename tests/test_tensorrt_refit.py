"""TensorRT refit (oat_edge.runtime.backends.tensorrt.refit) against the TEST DOUBLES of
tests/trt_standins.py — not TensorRT: TensorRT cannot run here. What is checked is oat-edge's
side: the engine is built with BuilderFlag.REFIT from a baked graph, the Refitter is given
exactly the weights a bake changes (by their ONNX names), missing or refused weights are one
clear DeviceError, a copy that frames still use is never refitted, and the swap happens only
after a successful refit (and an accepted check)."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from runtime_support import bundle_path
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
