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

from runtime_support import run_switcher_and_clients
from trt_standins import install_python_standins

pytest.importorskip("onnx")


def _baked(lam):
    """The synthetic BN path (``_residual_bn_path``) baked for a FiLM vector that depends on λ."""
    from oat_edge.runtime.bake import bake_graph

    model, c = _residual_bn_path()
    film = np.random.default_rng(int(lam * 1000)).normal(size=4 * c).astype(np.float32)
    return bake_graph(model, film)


@pytest.fixture
def refitter(monkeypatch):
    from oat_edge.trt_engine_build import TensorRTEngineBuilder
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
    from oat_edge.export.targets.tensorrt import build_engines

    dest = tmp_path / "bundle"
    shutil.copytree(tiny_bundle(tmp_path_factory), dest)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # refit builds keep their timing cache there
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


# --- every mode-dependent weight is refitted, kept FiLM constants included ------------------------
def _residual_bn_path():
    """A BN path shaped like a pre-activation WRN block: conv → FiLM (folded into the conv), then
    a residual sum → FiLM (no conv before it: kept as Mul/Add with constants). film = [γ1 β1 γ2 β2]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    c = 4
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in [
        ("conv1.weight", rng.normal(size=(c, 1, 3, 3))), ("conv1.bias", rng.normal(size=c)),
        ("conv2.weight", rng.normal(size=(c, c, 3, 3)) * 0.3), ("conv2.bias", rng.normal(size=c)),
        ("fc.weight", rng.normal(size=(3, c))), ("fc.bias", rng.normal(size=3))]]
    nodes = []
    for k in range(4):
        inits += [numpy_helper.from_array(np.array([k * c], np.int64), f"s{k}"),
                  numpy_helper.from_array(np.array([(k + 1) * c], np.int64), f"e{k}")]
        nodes.append(helper.make_node("Slice", ["film", f"s{k}", f"e{k}"], [f"f{k}"]))
        nodes.append(helper.make_node("Reshape", [f"f{k}", "shape"], [f"film{k}"]))
    inits.append(numpy_helper.from_array(np.array([1, c, 1, 1], np.int64), "shape"))
    nodes += [
        helper.make_node("Conv", ["images", "conv1.weight", "conv1.bias"], ["h1"], pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["h1", "film0"], ["h2"]), helper.make_node("Add", ["h2", "film1"], ["h3"]),
        helper.make_node("Relu", ["h3"], ["h4"]),
        helper.make_node("Conv", ["h4", "conv2.weight", "conv2.bias"], ["h5"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["h5", "h4"], ["h6"]),
        helper.make_node("Mul", ["h6", "film2"], ["h7"]), helper.make_node("Add", ["h7", "film3"], ["h8"]),
        helper.make_node("GlobalAveragePool", ["h8"], ["p"]), helper.make_node("Flatten", ["p"], ["q"]),
        helper.make_node("Gemm", ["q", "fc.weight", "fc.bias"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "bn_path", [
        helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 1, 8, 8]),
        helper.make_tensor_value_info("film", TensorProto.FLOAT, [4 * c])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], inits)
    return onnx.helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), c


def _refit_and_compare(model, film_a, film_b, chw, monkeypatch, version="10.3.0", precision="fp32"):
    """Build a refittable engine (numeric stand-in) from ``model`` baked at ``film_a``, refit it
    with the bake at ``film_b``'s ``changed`` and compare its logits with onnxruntime on that bake."""
    import onnxruntime as ort

    from oat_edge.runtime.bake import bake_graph
    from oat_edge.runtime.backends.tensorrt.refit import ModeRefitter
    from oat_edge.trt_engine_build import TensorRTEngineBuilder, convert_to_fp16
    from trt_standins import _compute_graph

    world = install_python_standins(monkeypatch, version=version, numeric=True)
    import tensorrt as trt  # the stand-in

    a, b = bake_graph(model, film_a), bake_graph(model, film_b)
    builder = TensorRTEngineBuilder()
    strong = precision == "fp16" and builder.fp16_method == "fp16-onnx"
    graph_a = convert_to_fp16(a.model) if strong else a.model
    profile = {"images": ((1, *chw), (2, *chw), (4, *chw))}
    plan, _ = builder.build(graph_a.SerializeToString(), profile, precision, refit=True)
    r = ModeRefitter(trt, plan, key="a", weight_dtype=np.float16 if strong else np.float32)
    assert r.refit("b", b.changed) and r.key == "b"
    x = np.random.default_rng(4).random((3, *chw), dtype=np.float32)
    got = _compute_graph(world, r.live.engine, x, None)
    graph_b = convert_to_fp16(b.model) if strong else b.model
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    want = ort.InferenceSession(graph_b.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    assert world.violations == []
    return a, b, got, want


def test_refit_rewrites_the_constants_of_kept_film_ops(monkeypatch):
    model, c = _residual_bn_path()
    rng = np.random.default_rng(1)
    film_a, film_b = rng.normal(size=4 * c).astype(np.float32), rng.normal(size=4 * c).astype(np.float32)
    a, b, got, want = _refit_and_compare(model, film_a, film_b, (1, 8, 8), monkeypatch)
    assert a.folded_sites == 2 and a.kept_ops == 2
    from onnx import numpy_helper

    inits_a = {t.name: numpy_helper.to_array(t) for t in a.model.graph.initializer}
    differ = {t.name for t in b.model.graph.initializer if not np.array_equal(numpy_helper.to_array(t), inits_a[t.name])}
    assert differ == set(b.changed)  # every initializer that differs between two modes is refitted
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_strongly_typed_fp16_engine_is_refitted_with_float16_weights(monkeypatch):
    """TensorRT 11: the engine parses the fp16 copy, so the Refitter takes float16 weights only."""
    model, c = _residual_bn_path()
    rng = np.random.default_rng(2)
    film_a, film_b = rng.normal(size=4 * c).astype(np.float32), rng.normal(size=4 * c).astype(np.float32)
    _a, _b, got, want = _refit_and_compare(model, film_a, film_b, (1, 8, 8), monkeypatch, version="11.1.0",
                                           precision="fp16")
    np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-2)


def test_fp16_refit_weights_beyond_the_float16_range_are_one_clear_error(monkeypatch):
    from oat_edge.errors import BundleError
    from oat_edge.runtime.bake import bake_graph
    from oat_edge.runtime.backends.tensorrt.refit import ModeRefitter
    from oat_edge.trt_engine_build import TensorRTEngineBuilder, convert_to_fp16

    install_python_standins(monkeypatch, version="11.1.0")
    import tensorrt as trt  # the stand-in

    model, c = _residual_bn_path()
    film = np.ones(4 * c, np.float32)
    a = bake_graph(model, film)
    plan, _ = TensorRTEngineBuilder().build(convert_to_fp16(a.model).SerializeToString(),
                                            {"images": ((1, 1, 8, 8), (2, 1, 8, 8), (4, 1, 8, 8))}, "fp16", refit=True)
    r = ModeRefitter(trt, plan, key="a", weight_dtype=np.float16)
    film[2 * c:3 * c] = 1e6  # γ2: a kept constant far beyond 65504
    with pytest.raises(BundleError, match="float16 range"):
        r.refit("b", bake_graph(model, film).changed)
    assert r.key == "a" and r.refits == 0


@pytest.mark.slow
def test_refit_on_a_wrn_bundle_matches_its_baked_mode(tmp_path_factory, monkeypatch):
    """WRN-16-8 at width 0.25: pre-activation blocks keep FiLM ops after residual sums. An engine
    built at λ = 0.3 and refitted for λ = 0.7 computes λ = 0.7's baked graph."""
    from export_helpers import make_checkpoint
    from oat_edge.bundle.film import film_vector
    from oat_edge.export import export_bundle
    from oat_edge.runtime.bake import load_path_model
    from oat_edge.bundle.safe_files import load_npz

    svhn = {"name": "svhn", "num_classes": 10, "input_shape": [3, 32, 32]}
    ckpt = make_checkpoint(tmp_path_factory.mktemp("wrn") / "wrn.pt", arch="wrn16_8", arch_kwargs={"widths": [0.25]},
                           dataset=svhn, input_shape=(3, 32, 32))
    out = export_bundle(ckpt, tmp_path_factory.mktemp("wrnb") / "b", widths=[0.25], tensorrt="off", progress=False,
                        parity_images=4)
    manifest = json.loads((out / "manifest.json").read_text())
    entry = next(p for p in manifest["paths"] if p["bn"] == "a")
    tables = load_npz(out / "film.npz")
    model = load_path_model(out / entry["file"])
    a, b, got, want = _refit_and_compare(model, film_vector(tables, 0.3, 0.25), film_vector(tables, 0.7, 0.25),
                                         (3, 32, 32), monkeypatch)
    assert a.kept_ops > 0
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(want).max())))


# --- the refit builds and frames (RefitBaking) ------------------------------------------------------
def _refit_baking(world, device=1, cache_dir=None, lo=2):
    import types

    import pycuda.driver as cuda  # the stand-ins
    import tensorrt as trt

    from oat_edge.runtime.backends.tensorrt.refit import RefitBaking

    io = types.SimpleNamespace(images="images", logits="logits", input_shape=(1, 8, 8), num_classes=3)
    profile = {"images": ((lo, 1, 8, 8), (4, 1, 8, 8), (4, 1, 8, 8))}
    return RefitBaking(trt, cuda, device, io, profile, "fp32", 8,
                       gpu={"name": "Orin (nvgpu)", "compute_capability": "8.7"}, cache_dir=cache_dir)


def test_refit_builds_run_on_the_runners_gpu_with_the_jetson_workspace_and_a_timing_cache(monkeypatch, tmp_path):
    from oat_edge.errors import DeviceError
    from oat_edge.runtime.bake import bake_graph
    from oat_edge.trt_engine_build import default_workspace_mb

    import onnxruntime as ort

    world = install_python_standins(monkeypatch, numeric=True)  # a fresh process: no cuda.init() yet
    model, c = _residual_bn_path()
    rb = _refit_baking(world, device=1, cache_dir=tmp_path)
    baked = bake_graph(model, np.ones(4 * c, np.float32))
    run, nbytes, info = rb.bake("w1", "a", baked, "a")
    assert world.build_devices == [1]  # built with the runner's context current, not device 0
    assert world.builder_configs[-1].pool_limits == {"WORKSPACE": default_workspace_mb({"name": "Orin (nvgpu)"}) << 20}
    assert "REFIT" in world.builder_configs[-1].flags
    (cache_file,) = (tmp_path / "timing-caches").glob("*.cache")
    assert nbytes == 2 * len(world.plans[-1])  # both copies of the engine
    x = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
    want = ort.InferenceSession(baked.to_bytes(), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    np.testing.assert_allclose(run(x), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(DeviceError, match="outside the engine profile 2..4"):
        run(x[:1])  # under the profile's minimum
    with pytest.raises(DeviceError, match="outside the engine profile"):
        run(np.concatenate([x, x]))  # over its maximum
    assert world.violations == []  # pinned host buffers, a context current for every call
    # another width (or a later run) starts from the stored cache
    cache_file.write_bytes(b"TC10.3.0;stored")
    rb.bake("w2", "a", bake_graph(model, np.ones(4 * c, np.float32)), "a")
    assert world.builder_configs[-1].cache.blob == b"TC10.3.0;stored"


def test_an_execution_context_trt_does_not_create_is_one_clear_error(monkeypatch):
    from oat_edge.errors import DeviceError
    from oat_edge.runtime.bake import bake_graph

    world = install_python_standins(monkeypatch)
    model, c = _residual_bn_path()
    rb = _refit_baking(world, device=0)
    world.fail_next["create_execution_context"] = 2  # the second copy's context
    with pytest.raises(DeviceError, match="execution context"):
        rb.bake("w1", "a", bake_graph(model, np.ones(4 * c, np.float32)), "a")


def test_the_standby_key_is_read_under_the_refitters_lock(refitter):
    _world, _template, r = refitter
    got = []
    with r._lock:  # e.g. a frame swapping the copies
        t = threading.Thread(target=lambda: got.append(r.standby_key()))
        t.start()
        t.join(0.2)
        assert got == []  # waits for the lock
    t.join(10)
    assert got == [None]


def test_a_refit_takes_the_standby_mode_away_from_new_frames_before_it_waits(refitter, monkeypatch):
    """While the refit waits for a frame still on the standby copy, a new frame asking for the
    mode that copy held gets nothing (it runs on the FiLM path) instead of a copy about to be rewritten."""
    import types

    from oat_edge.runtime.backends.tensorrt import refit as refit_mod

    _world, _template, r = refitter
    assert r.refit(0.5, _baked(0.5).changed)  # live 0.5, standby 0.3
    held = r.acquire(0.3)  # a frame on 0.3's copy (it becomes live)
    r.release(r.acquire(0.5))  # a later frame makes 0.5's copy live: 0.3's, still held, is the standby
    waiting = threading.Event()
    real_time = refit_mod.time
    monkeypatch.setattr(refit_mod, "time", types.SimpleNamespace(
        monotonic=real_time.monotonic, perf_counter=real_time.perf_counter,
        sleep=lambda s: (waiting.set(), real_time.sleep(s))))
    t = threading.Thread(target=lambda: r.refit(0.9, _baked(0.9).changed))
    t.start()
    assert waiting.wait(10)  # the refit waits for `held`
    assert r.acquire(0.3) is None  # already taken away from new frames
    r.release(held)
    t.join(10)
    assert r.key == 0.9 and set(r.keys()) == {0.9, 0.5}


def test_a_timing_cache_trt_rejects_is_replaced_not_fatal(monkeypatch, tmp_path):
    from oat_edge.runtime.bake import bake_graph

    world = install_python_standins(monkeypatch)
    model, c = _residual_bn_path()
    rb = _refit_baking(world, device=0, cache_dir=tmp_path)
    rb.bake("w1", "a", bake_graph(model, np.ones(4 * c, np.float32)), "a")
    (cache_file,) = (tmp_path / "timing-caches").glob("*.cache")
    cache_file.write_bytes(b"TC9.9.9;written by another TensorRT")  # the stand-in refuses it
    rb.bake("w2", "a", bake_graph(model, np.ones(4 * c, np.float32)), "a")
    assert cache_file.read_bytes().startswith(b"TC10.3.0;")  # rebuilt without it, then replaced
    assert world.violations == []


def test_the_standin_records_a_refit_under_a_running_context(monkeypatch):
    """The stand-in's own check: refitting an engine whose context has work pending is a violation."""
    from oat_edge.runtime.bake import bake_graph
    from oat_edge.trt_engine_build import TensorRTEngineBuilder

    world = install_python_standins(monkeypatch)
    import pycuda.driver as cuda
    import tensorrt as trt

    model, c = _residual_bn_path()
    baked = bake_graph(model, np.ones(4 * c, np.float32))
    plan, _ = TensorRTEngineBuilder().build(baked.to_bytes(), {"images": ((1, 1, 8, 8), (2, 1, 8, 8), (4, 1, 8, 8))},
                                            "fp32", refit=True)
    cuda.init()
    ctx = cuda.Device(0).retain_primary_context()
    ctx.push()
    try:
        engine = trt.Runtime(trt.Logger()).deserialize_cuda_engine(plan)
        context = engine.create_execution_context()
        stream = cuda.Stream()
        context.set_input_shape("images", (2, 1, 8, 8))
        for name, n in (("images", 2 * 64), ("logits", 2 * 3)):
            context.set_tensor_address(name, int(cuda.mem_alloc(4 * n)))
        assert context.execute_async_v3(stream.handle) and engine.contexts_running == 1
        refitter = trt.Refitter(engine, trt.Logger())
        for name, value in baked.changed.items():
            assert refitter.set_named_weights(name, trt.Weights(value))
        assert refitter.refit_cuda_engine()
        assert world.violations == ["refit while a context of the engine was executing"]
        stream.synchronize()
        assert engine.contexts_running == 0
    finally:
        ctx.pop()
