"""oat-edge's Python TensorRT code run end to end on the CPU, against STAND-INS for TensorRT,
pycuda and (for the C++ executor) CUDA.

TensorRT and pycuda cannot be installed on the development machine. tests/trt_standins.py puts
fake ``tensorrt`` and ``pycuda.driver`` modules into sys.modules for one test (labelled test
doubles; they implement only the calls oat-edge makes, under the model described there), so that
the real code runs: ``build_engines`` -> ``TensorRTEngineBuilder`` -> engine files and manifest
-> ``Runtime(backend="tensorrt")`` -> ``TensorRTRunner`` -> the pycuda executor, or the REAL C++
executor compiled against the link-time double. Passing says oat-edge's logic is right under that
model; it does not say TensorRT ran (docs/tensorrt.md lists what never executed).
"""

import functools
import json
import re
import shutil
import threading

import numpy as np
import pytest

from export_helpers import tiny_bundle
from oat_edge.errors import BundleError, ConfigError, DeviceError
from oat_edge.export import load_manifest
from oat_edge.export.targets.tensorrt import build_engines
from oat_edge.host import is_jetson
from oat_edge.trt_engine_build import default_workspace_mb
from oat_edge.runtime import Runtime
from oat_edge.runtime.backends.base import BundleContext
from oat_edge.runtime.backends.tensorrt import TensorRTRunner, check_tensorrt_versions, engine_scratch_bytes
from runtime_support import run_switcher_and_clients
from trt_standins import (DoubleExt, build_executor_double, expected_logits, install_python_standins, tag_for_onnx)

ORIN = {"name": "Orin (nvgpu)", "compute_capability": "8.7"}


@pytest.fixture
def bundle(tmp_path_factory, tmp_path):
    dest = tmp_path / "bundle"
    shutil.copytree(tiny_bundle(tmp_path_factory), dest)
    return dest


def snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def oracle(rt, x, lam, width):
    """What the stand-in engine of the mode's path computes."""
    pid = rt.path_for(lam, width)
    entry = next(e for e in rt.manifest["paths"] + rt.manifest["baked"] if e["id"] == pid)
    film = rt.film_vector(lam, width) if "film_size" in entry else None
    return expected_logits(x, film, tag_for_onnx(entry["sha256"]), rt.num_classes)


def build(bundle, **kw):
    return build_engines(bundle, precision="fp32", batch="1:4:8", progress=False, **kw)


# --- build + run, Python path --------------------------------------------------------------------
def test_build_engines_then_run_every_mode_on_the_pycuda_executor(bundle, monkeypatch):
    world = install_python_standins(monkeypatch)
    results = build(bundle)
    assert {r["action"] for r in results} == {"built"}
    manifest = load_manifest(bundle)
    assert {e["tensorrt_version"] for e in manifest["engines"]} == {"10.3.0"}
    assert {e["gpu_name"] for e in manifest["engines"]} == {"Orin (nvgpu)"}
    # a Jetson build gets the documented default workspace limit
    assert world.builder_configs and {c.pool_limits.get("WORKSPACE") for c in world.builder_configs} == {
        default_workspace_mb(ORIN) << 20}
    with Runtime(bundle, backend="tensorrt") as rt:
        assert rt.backend.executor == "pycuda"
        rng = np.random.default_rng(0)
        for mode in rt.modes:
            rt.set_mode(mode.lam, mode.width)
            x = rng.random((3, *rt.input_shape), dtype=np.float32)
            np.testing.assert_allclose(rt.infer(x), oracle(rt, x, mode.lam, mode.width), rtol=1e-5, atol=1e-5)
    assert world.violations == [] and world.executions == len(rt.modes)


def test_concurrent_set_mode_and_infer_on_the_pycuda_executor(bundle, monkeypatch):
    world = install_python_standins(monkeypatch)
    build(bundle)
    rt = Runtime(bundle, backend="tensorrt")
    modes = rt.modes
    stop, errors, count = threading.Event(), [], []

    def switcher():
        i = 0
        while not stop.is_set():
            m = modes[i % len(modes)]
            rt.set_mode(m.lam, m.width)
            i += 1

    def client(seed):
        rng = np.random.default_rng(seed)
        try:
            for _ in range(40):
                x = rng.random((int(rng.integers(1, 9)), *rt.input_shape), dtype=np.float32)
                out, mode = rt.infer_with_mode(x)
                np.testing.assert_allclose(out, oracle(rt, x, mode.lam, mode.width), rtol=1e-5, atol=1e-5)
                count.append(1)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    run_switcher_and_clients(switcher, [functools.partial(client, s) for s in range(3)], stop)
    rt.close()
    assert errors == [] and len(count) == 120
    assert world.violations == []


def test_pycuda_device_calls_never_share_the_scratch_with_later_calls(bundle, monkeypatch):
    """A device call (caller's pointers, caller's stream) followed at once by a host call on
    another path: the two contexts share one scratch block, so the device call's work must be
    finished first (the stand-in records a violation when work of both is pending on two
    unordered streams). Its inputs must come from the caller's stream, its result be there
    without the caller synchronising."""
    world = install_python_standins(monkeypatch)
    build(bundle)
    rt = Runtime(bundle, backend="tensorrt")
    runner, ex = rt.backend, rt.backend._exec
    baked = next(p for p in runner.paths if not p.has_film)
    other = next(p for p in runner.paths if p.has_film)
    caller = world.stream()
    x = np.random.default_rng(1).random((2, *rt.input_shape), dtype=np.float32)
    dx, dout = world.alloc(x.nbytes), world.alloc(2 * rt.num_classes * 4)
    caller.enqueue(("copy", dx, x.ctypes.data, x.nbytes, [dx]))  # the caller's stream produces the input
    ex.infer_device(baked.index, dx, 2, None, dout, caller)
    # the result is there when the call returns (stand-in work runs only when a stream is waited for)
    got = np.frombuffer(bytes(world.allocs[dout][0][: 2 * rt.num_classes * 4]), np.float32).reshape(2, -1)
    entry = next(e for e in rt.manifest["baked"] if e["id"] == baked.id)
    np.testing.assert_allclose(got, expected_logits(x, None, tag_for_onnx(entry["sha256"]), rt.num_classes), rtol=1e-5)
    film = rt.film_vector(0.5, other.width)
    runner.run(other.index, x, film)
    assert world.violations == []
    executes = [i for i, line in enumerate(world.log) if line.startswith("execute_async_v3")]
    assert world.log.index(f"synchronize stream{caller.handle}") < executes[0]
    own = f"stream{ex._stream.handle}"
    assert all(own in world.log[i] for i in executes)  # every context's work on the executor's one stream
    rt.close()


def test_tensorrt_11_bindings_have_no_device_memory_size(bundle, monkeypatch):
    world = install_python_standins(monkeypatch, version="11.1.0", scratch=0)
    build(bundle)
    rt = Runtime(bundle, backend="tensorrt")
    assert not hasattr(rt.backend._exec._engines[0], "device_memory_size")
    x = np.random.default_rng(2).random((2, *rt.input_shape), dtype=np.float32)
    np.testing.assert_allclose(rt.infer(x), oracle(rt, x, rt.mode.lam, rt.mode.width), rtol=1e-5, atol=1e-5)
    rt.close()
    assert world.violations == []


def test_engine_scratch_bytes_prefers_v2_even_when_zero():
    class V11:
        device_memory_size_v2 = 0

    class V100:
        device_memory_size = 4096

    assert engine_scratch_bytes(V11()) == 0 and engine_scratch_bytes(V100()) == 4096


# --- TensorRT/CUDA failures and mismatched engines -------------------------------------------------
def test_failing_tensorrt_calls_are_one_line_device_errors(bundle, monkeypatch):
    world = install_python_standins(monkeypatch)
    build(bundle)
    rt = Runtime(bundle, backend="tensorrt")
    x = np.random.default_rng(3).random((2, *rt.input_shape), dtype=np.float32)
    for call in ("set_input_shape", "set_tensor_address", "execute_async_v3"):
        world.fail_next[call] = 1
        with pytest.raises(DeviceError, match=f"tensorrt: inference failed: {call}") as e:
            rt.infer(x)
        assert "\n" not in str(e.value)
    np.testing.assert_allclose(rt.infer(x), oracle(rt, x, rt.mode.lam, rt.mode.width), rtol=1e-5, atol=1e-5)
    rt.close()


def test_an_engine_that_does_not_match_the_bundle_is_refused(bundle, monkeypatch):
    install_python_standins(monkeypatch)
    build(bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    entry = next(e for e in manifest["engines"] if e["path_id"] == manifest["paths"][0]["id"])
    engine = bundle / entry["file"]
    engine.write_bytes(engine.read_bytes().replace(b"film=", b"film=1"))  # another FiLM size
    import hashlib

    entry["sha256"] = hashlib.sha256(engine.read_bytes()).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"'film' has shape \[1\d+\], the bundle's FiLM vector has \d+ values.*build-engines"):
        Runtime(bundle, backend="tensorrt")


# --- builder -------------------------------------------------------------------------------------
def test_a_foreign_timing_cache_is_an_error_and_is_kept(bundle, monkeypatch, tmp_path):
    install_python_standins(monkeypatch)
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"TC10.0.0;written elsewhere")
    before = snapshot(bundle)
    with pytest.raises(ConfigError, match="rejected the timing cache"):
        build(bundle, timing_cache=cache)
    assert cache.read_bytes() == b"TC10.0.0;written elsewhere" and snapshot(bundle) == before
    cache.unlink()
    build(bundle, timing_cache=cache)  # a fresh cache is written, then accepted
    assert cache.read_bytes().startswith(b"TC10.3.0;")
    build(bundle, timing_cache=cache, force=True)


def test_workspace_default_on_jetson_only(bundle, monkeypatch):
    gib = 1 << 30
    assert default_workspace_mb(ORIN, 4 * gib) == 512  # Orin Nano 4 GB
    assert default_workspace_mb(ORIN, 8 * gib) == 1024
    assert default_workspace_mb(ORIN, 64 * gib) == 1024
    assert default_workspace_mb(ORIN, 1 * gib) == 256
    rtx = {"name": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9"}
    if not is_jetson(rtx):  # false except on a Jetson itself (/etc/nv_tegra_release)
        assert default_workspace_mb(rtx, 64 * gib) is None
        world = install_python_standins(monkeypatch, gpu_name=rtx["name"])
        build(bundle)
        assert {c.pool_limits.get("WORKSPACE") for c in world.builder_configs} == {None}
    world = install_python_standins(monkeypatch)
    build(bundle, workspace_mb=300, force=True)
    assert {c.pool_limits.get("WORKSPACE") for c in world.builder_configs} == {300 << 20}


def test_tensorrt_before_10_is_refused(bundle, monkeypatch):
    install_python_standins(monkeypatch, version="8.6.1")
    with pytest.raises(ConfigError, match="TensorRT 8.6.1 is too old"):
        build(bundle)


# --- versions ------------------------------------------------------------------------------------
@pytest.mark.parametrize("python,headers,library,pattern", [
    ("10.3.0", "10.3.0", "10.3.0", None),
    ("10.3.0.30", "10.3.0", "10.3.0", None),
    ("11.1.0", None, None, None),
    ("8.6.1", None, None, "needs TensorRT >= 10"),
    ("10.3.0", "10.3.0", "10.7.0", "loaded libnvinfer 10.7.0, Python's tensorrt is 10.3.0"),
    ("10.7.0", "10.3.0", "10.7.0", "compiled against TensorRT 10.3.0 headers but runs with 10.7.0"),
    ("11.1.0", "10.3.0", "11.1.0", "compiled against TensorRT 10.3.0"),
])
def test_tensorrt_version_agreement(python, headers, library, pattern):
    if pattern is None:
        check_tensorrt_versions(python, headers, library)
    else:
        with pytest.raises(ConfigError, match=pattern):
            check_tensorrt_versions(python, headers, library)


@pytest.fixture(scope="module")
def executor_double(tmp_path_factory):
    try:
        return build_executor_double(tmp_path_factory.mktemp("trt_double"))
    except FileNotFoundError:
        pytest.skip("no C++ compiler to build the executor against the test double")


def test_runner_on_the_cpp_executor_checks_versions_runs_and_reports_errors(bundle, monkeypatch, executor_double):
    """The Python runner driving the REAL C++ executor (compiled against the link-time double)."""
    d = executor_double
    d.reset()
    install_python_standins(monkeypatch)
    build(bundle)
    rt = Runtime(bundle, backend="tensorrt")  # for its paths and I/O
    def args(ext):  # what Runtime hands every runner: the bundle, with the C++ extension to use
        return dict(bundle=BundleContext(rt.manifest, bundle, ext))

    with pytest.raises(ConfigError, match="loaded libnvinfer 10.4.0"):
        TensorRTRunner(rt.paths, rt.io, **args(DoubleExt(d, library_version="10.4.0")))
    runner = TensorRTRunner(rt.paths, rt.io, **args(DoubleExt(d)))
    assert runner.executor == "c++"
    rng = np.random.default_rng(4)
    for mode in rt.modes:
        spec = runner.path(rt.path_for(mode.lam, mode.width))
        x = rng.random((4, *rt.input_shape), dtype=np.float32)
        film = rt.film_vector(mode.lam, mode.width) if spec.has_film else None
        np.testing.assert_allclose(runner.run(spec.index, x, film), oracle(rt, x, mode.lam, mode.width), rtol=1e-5, atol=1e-5)
    d.fail("setTensorAddress")
    with pytest.raises(DeviceError, match=r"tensorrt: inference failed: tensorrt executor: setTensorAddress\(images\) failed"):
        runner.run(0, x, rt.film_vector(rt.mode.lam, runner.paths[0].width) if runner.paths[0].has_film else None)
    with pytest.raises(ConfigError):  # engines from another TensorRT are never deserialised
        TensorRTRunner(rt.paths, rt.io, **args(DoubleExt(d, library_version="10.3.1")))
    d.fail("cudaMalloc", 2)
    with pytest.raises(DeviceError, match=r"loading the engines failed: .*cudaMalloc\(images\): out of memory"):
        TensorRTRunner(rt.paths, rt.io, **args(DoubleExt(d)))
    runner.close()
    rt.close()
    import gc

    gc.collect()
    assert d.violations() == []
    assert d.live()["contexts"] == "0" and d.live()["engines"] == "0"


@pytest.mark.parametrize("change,pattern", [
    ({}, None),
    ({"images": (True, False, (-1, 1, 8, 8))}, "'images' is not float32"),
    ({"logits": (False, False, (-1, 10))}, "'logits' is not float32"),
    ({"film": (True, False, (12,))}, "'film' is not float32"),
    ({"logits": (True, True, (-1, 10))}, "has 'logits' as an input"),
    ({"film": (True, True, (16,))}, r"'film' has shape \[16\], the bundle's FiLM vector has 12 values"),
    ({"images": (True, True, (-1, 3, 8, 8))}, r"'images' has shape \[-1, 3, 8, 8\]"),
    ({"mask": (True, True, (1,))}, r"does not describe: \['mask'\]"),
])
def test_python_engine_io_checks(change, pattern):
    from oat_edge.runtime.backends.base import IOSpec
    from oat_edge.runtime.backends.tensorrt import engine_io_problem

    io = IOSpec(input_shape=(1, 8, 8), num_classes=10)
    tensors = {"images": (True, True, (-1, 1, 8, 8)), "film": (True, True, (12,)), "logits": (False, True, (-1, 10))}
    problem = engine_io_problem({**tensors, **change}, io, 12)
    assert problem is None if pattern is None else re.search(pattern, problem), problem
    assert "lacks" in engine_io_problem({k: v for k, v in tensors.items() if k != "film"}, io, 12)


def test_pycuda_executor_refuses_a_batch_over_its_buffers(monkeypatch):
    """Engines with different batch maxima: the buffers hold the smallest; a batch one engine's
    profile allows but the buffers do not is one clear error, not an overflow."""
    from oat_edge.errors import InputError

    world, ex = _direct_executor(monkeypatch)
    x = np.random.default_rng(0).random((6, 1, 8, 8), dtype=np.float32)
    out = np.zeros((6, 3), np.float32)
    with pytest.raises(InputError, match="buffers hold"):
        ex.infer_host(0, x, None, out)
    ex.infer_host(0, x[:4], None, out[:4])
    np.testing.assert_allclose(out[:4], expected_logits(x[:4], None, 0.0, 3), rtol=1e-5)
    assert world.violations == []


def test_gpu_identification_asks_the_driver_without_cuda_python_pycuda_or_torch(monkeypatch):
    import sys

    from oat_edge import host

    for mod in ("cuda", "cuda.bindings", "pycuda", "pycuda.driver", "torch"):
        monkeypatch.setitem(sys.modules, mod, None)  # none of the three is installed
    monkeypatch.setattr(host, "cuda_devices", lambda: [ORIN])  # what libcuda reports on an Orin
    assert host.gpu_info() == ORIN


def _direct_executor(monkeypatch, version="10.3.0", maxima=(8, 4), film=0):
    from pathlib import Path

    from oat_edge.runtime.backends.base import IOSpec, PathSpec
    from oat_edge.runtime.backends.tensorrt.runner import _PycudaExecutor
    from trt_standins import fake_engine_spec

    world = install_python_standins(monkeypatch, version=version)  # fresh: nothing has called cuda.init()
    io = IOSpec(input_shape=(1, 8, 8), num_classes=3, batch_max=8)
    kind = "film" if film else "baked"
    paths = [PathSpec(i, f"p{i}", Path("x"), kind, "a", 1.0, 0.3, film) for i in range(len(maxima))]
    blobs = [fake_engine_spec((1, 8, 8), 3, film, batch=(1, m)).encode() for m in maxima]
    return world, _PycudaExecutor(blobs, io, paths, min(maxima), 0)


@pytest.mark.parametrize("version", ["10.0.1", "10.3.0", "11.1.0"])
def test_pycuda_executor_on_each_tensorrt_api(monkeypatch, version):
    """10.0 has only the context's device_memory setter and device_memory_size; 11 only the V2
    calls. Host calls stage through page-locked buffers; a device call's result is on the
    caller's side when it returns."""
    world, ex = _direct_executor(monkeypatch, version, film=4)
    x = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
    film = np.arange(4, dtype=np.float32)
    out = np.zeros((3, 3), np.float32)
    ex.infer_host(1, x, film, out)
    np.testing.assert_allclose(out, expected_logits(x, film, 0.0, 3), rtol=1e-5)
    caller = world.stream()
    dx, dfilm, dout = world.alloc(x.nbytes), world.alloc(film.nbytes), world.alloc(out.nbytes)
    caller.enqueue(("copy", dx, x.ctypes.data, x.nbytes, [dx]))  # the caller's stream writes the inputs
    caller.enqueue(("copy", dfilm, film.ctypes.data, film.nbytes, [dfilm]))
    ex.infer_device(0, dx, 3, dfilm, dout, caller)
    got = np.frombuffer(bytes(world.allocs[dout][0][: out.nbytes]), np.float32).reshape(3, 3)
    np.testing.assert_allclose(got, expected_logits(x, film, 0.0, 3), rtol=1e-5)
    assert world.violations == []
