"""Backend pieces that do not need a bundle: the ONNX → torch interpreter against onnxruntime op
by op, the backend choice of backend="auto", device keys, and the TensorRT backend's logic
(engine selection, stale/foreign engine refusal, binding shapes, batch profiles) — which runs
here although TensorRT itself cannot."""

from __future__ import annotations

import json

import numpy as np
import pytest

from oat_edge.errors import BundleError, ConfigError, InputError
from oat_edge.host import slug
from oat_edge.runtime.backends import choose_backend
from oat_edge.runtime.backends.tensorrt import auto_rule
from oat_edge.runtime.backends.base import IOSpec, PathSpec
from oat_edge.runtime.device import device_key

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from oat_edge.runtime.backends.onnx_torch import OnnxModule, check_ops, supported_ops  # noqa: E402


# --- ONNX interpreter --------------------------------------------------------------------------------
def _model(nodes, inputs, output, inits=(), opset=17):
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(a.shape)) for n, a in inputs.items()],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v), name=k) for k, v in inits])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _compare(model, inputs, atol=1e-5):
    import onnxruntime as ort

    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, inputs)[0]
    mod = OnnxModule(model, "test graph").eval()
    with torch.no_grad():
        out = mod(*[torch.from_numpy(v) for v in inputs.values()]).numpy()
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, atol=atol, rtol=1e-5)


R = np.random.default_rng(0)
X = R.standard_normal((2, 4, 7, 6)).astype(np.float32)
i64 = lambda *v: np.array(v, np.int64)  # noqa: E731


@pytest.mark.parametrize("case", [
    "conv_asym_pads", "conv_group_stride_bias", "gemm_trans", "matmul", "reducemean17", "reducemean18",
    "slice", "reshape_zero", "flatten", "squeeze_unsqueeze", "concat_transpose", "pools", "gather_shape",
    "activations", "batchnorm", "constant_cast_arith",
])
def test_interpreter_matches_onnxruntime(case):
    W = R.standard_normal((5, 4, 3, 3)).astype(np.float32)
    if case == "conv_asym_pads":
        m = _model([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 0, 2, 1], strides=[1, 2])],
                   {"x": X}, "y", [("w", W)])
    elif case == "conv_group_stride_bias":
        Wg = R.standard_normal((4, 2, 3, 3)).astype(np.float32)
        m = _model([helper.make_node("Conv", ["x", "w", "b"], ["y"], group=2, pads=[1, 1, 1, 1], strides=[2, 2],
                                     dilations=[1, 1], kernel_shape=[3, 3])],
                   {"x": X}, "y", [("w", Wg), ("b", R.standard_normal(4).astype(np.float32))])
    elif case == "gemm_trans":
        a = R.standard_normal((3, 5)).astype(np.float32)
        m = _model([helper.make_node("Gemm", ["a", "b", "c"], ["y"], transA=1, transB=1, alpha=0.5, beta=2.0)],
                   {"a": a}, "y", [("b", R.standard_normal((4, 3)).astype(np.float32)),
                                   ("c", R.standard_normal(4).astype(np.float32))])
        _compare(m, {"a": a})
        return
    elif case == "matmul":
        m = _model([helper.make_node("MatMul", ["x", "w"], ["y"])], {"x": X}, "y",
                   [("w", R.standard_normal((6, 3)).astype(np.float32))])
    elif case == "reducemean17":
        m = _model([helper.make_node("ReduceMean", ["x"], ["y"], axes=[2, 3], keepdims=0)], {"x": X}, "y")
    elif case == "reducemean18":
        m = _model([helper.make_node("ReduceMean", ["x", "ax"], ["y"], keepdims=1)], {"x": X}, "y",
                   [("ax", i64(-1, 1))], opset=18)
    elif case == "slice":
        m = _model([helper.make_node("Slice", ["x", "s", "e", "a", "st"], ["t"]),
                    helper.make_node("Slice", ["t", "s2", "e2"], ["y"])], {"x": X}, "y",
                   [("s", i64(1, -5)), ("e", i64(100, -1)), ("a", i64(1, 3)), ("st", i64(2, 1)),
                    ("s2", i64(0)), ("e2", i64(1))])
    elif case == "reshape_zero":
        m = _model([helper.make_node("Reshape", ["x", "s"], ["y"])], {"x": X}, "y", [("s", i64(0, -1, 6))])
    elif case == "flatten":
        m = _model([helper.make_node("Flatten", ["x"], ["y"], axis=2)], {"x": X}, "y")
    elif case == "squeeze_unsqueeze":
        m = _model([helper.make_node("Unsqueeze", ["x", "a"], ["u"]), helper.make_node("Squeeze", ["u", "b"], ["y"])],
                   {"x": X}, "y", [("a", i64(0, -1)), ("b", i64(0))], opset=13)
    elif case == "concat_transpose":
        m = _model([helper.make_node("Concat", ["x", "x"], ["c"], axis=1),
                    helper.make_node("Transpose", ["c"], ["y"], perm=[0, 2, 3, 1])], {"x": X}, "y")
    elif case == "pools":
        m = _model([helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1]),
                    helper.make_node("AveragePool", ["p"], ["q"], kernel_shape=[2, 2], strides=[1, 1]),
                    helper.make_node("GlobalAveragePool", ["q"], ["y"])], {"x": X}, "y")
    elif case == "gather_shape":
        m = _model([helper.make_node("Gather", ["x", "i"], ["g"], axis=1),
                    helper.make_node("Shape", ["g"], ["sh"]),
                    helper.make_node("Cast", ["sh"], ["shf"], to=TensorProto.FLOAT),
                    helper.make_node("ReduceMean", ["g"], ["m"], axes=[1, 2, 3], keepdims=0),
                    helper.make_node("Unsqueeze", ["m", "ax"], ["mu"]),
                    helper.make_node("Mul", ["mu", "shf"], ["y"])], {"x": X}, "y",
                   [("i", i64(-1, 0, 2)), ("ax", i64(1))])
    elif case == "activations":
        m = _model([helper.make_node("LeakyRelu", ["x"], ["a"], alpha=0.1), helper.make_node("Sigmoid", ["a"], ["b"]),
                    helper.make_node("Clip", ["b", "lo", "hi"], ["c"]), helper.make_node("Relu", ["c"], ["d"]),
                    helper.make_node("Identity", ["d"], ["y"])], {"x": X}, "y",
                   [("lo", np.array(0.3, np.float32)), ("hi", np.array(0.6, np.float32))])
    elif case == "batchnorm":
        c = lambda: R.random(4).astype(np.float32) + 0.5  # noqa: E731
        m = _model([helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], epsilon=1e-3)], {"x": X}, "y",
                   [("s", c()), ("b", c()), ("m", c()), ("v", c())])
    elif case == "constant_cast_arith":
        k = helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.array([2.0], np.float32)))
        m = _model([k, helper.make_node("Sub", ["x", "k"], ["a"]), helper.make_node("Div", ["a", "k"], ["b"]),
                    helper.make_node("Neg", ["b"], ["c"]), helper.make_node("Mul", ["c", "c"], ["d"]),
                    helper.make_node("Sqrt", ["d"], ["e"]), helper.make_node("Add", ["e", "k"], ["y"])], {"x": X}, "y")
    _compare(m, {"x": X})


def test_interpreter_refuses_unknown_ops():
    m = _model([helper.make_node("Tanh", ["x"], ["y"])], {"x": X}, "y")
    with pytest.raises(BundleError, match=r"\['Tanh'\].*onnxruntime backend"):
        OnnxModule(m, "path x")
    with pytest.raises(BundleError, match="Erf"):
        check_ops(["Conv", "Erf"], "path a_w1")
    check_ops(["Add", "Conv", "Div", "Gemm", "Mul", "ReduceMean", "Relu", "Reshape", "Slice", "Sub"], "path ok")
    assert "Conv" in supported_ops()


# --- backend choice ------------------------------------------------------------------------------------
def _choose(requested="auto", device=None, trt=True, gpu=True, engines=(True, "")):
    calls = []

    def probe(name, value):
        def f():
            calls.append(name)
            return value
        return f

    def auto_check(backend):  # the TensorRT loader's rule, with stand-in probes
        assert backend.name == "tensorrt"
        return auto_rule(probe("trt", trt), probe("gpu", gpu), probe("engines", engines))

    name, why = choose_backend(requested, device, auto_check)
    return name, why, calls


def test_auto_backend_rules():
    assert _choose()[0] == "tensorrt"
    name, why, calls = _choose(trt=False)
    assert name == "onnxruntime" and "not installed" in why and calls == ["trt"]  # nothing else probed
    assert _choose(gpu=False)[:2] == ("onnxruntime", "no CUDA GPU found")
    name, why, _ = _choose(engines=(False, "engine a_w1 was built with TensorRT 10.0"))
    assert name == "onnxruntime" and "10.0" in why
    assert _choose(device="cuda", engines=(False, "none"))[0] == "torch"  # explicit GPU: torch, not CPU
    assert _choose(device="cpu")[0] == "onnxruntime" and _choose(device="cpu")[2] == []
    assert _choose("torch")[:2] == ("torch", "requested")
    with pytest.raises(ConfigError):
        _choose("tflite")
    with pytest.raises(ConfigError):
        _choose(device="tpu")


def test_device_key_names_processor_backend_and_threads():
    assert slug("Intel(R) Xeon(R) CPU @ 2.20GHz") == "intel-xeon-cpu-2-20ghz"
    k = device_key("onnxruntime", 4)
    assert k.startswith("cpu-") and k.endswith("-onnxruntime-t4") and k == slug(k, 200)
    assert device_key("onnxruntime") == k[: -len("-t4")]
    assert device_key("tensorrt").startswith("gpu-") and device_key("tensorrt").endswith("-tensorrt")


# --- TensorRT backend logic ---------------------------------------------------------------------------
ENV = {"tensorrt_version": "10.3.0", "gpu": {"name": "Orin", "compute_capability": "8.7"}}


def _paths(bundle, manifest):
    out = []
    for i, e in enumerate(manifest["paths"]):
        out.append(PathSpec(i, e["id"], bundle / e["file"], "film", e["bn"], float(e["width"]), None,
                            int(e["film_size"]), e["sha256"]))
    return out


@pytest.fixture
def engine_bundle(tmp_path):
    """A bundle copy with a (fake-content) engine per path for ENV's device, hashed like real ones."""
    from oat_edge.fileio import sha256_file

    from runtime_support import copy_bundle

    b = copy_bundle(tmp_path)
    m = json.loads((b / "manifest.json").read_text())
    engines = []
    for e in m["paths"]:
        f = b / "engines" / "orin-sm87-trt10.3.0" / f"{e['id']}.fp16.engine"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"engine bytes of " + e["id"].encode())
        engines.append({"path_id": e["id"], "file": str(f.relative_to(b)), "sha256": sha256_file(f),
                        "tensorrt_version": "10.3.0", "gpu_name": "NVIDIA Orin", "compute_capability": "8.7",
                        "precision": "fp16", "profile": {"min": 1, "opt": 4, "max": 8},
                        "onnx_sha256": e["sha256"], "device": "orin-sm87-trt10.3.0"})
    m["engines"] = engines
    (b / "manifest.json").write_text(json.dumps(m))
    return b, m


def test_engine_selection_and_staleness(engine_bundle):
    from oat_edge.runtime.backends.tensorrt import engines_usable, select_engines

    b, m = engine_bundle
    paths = _paths(b, m)
    chosen = select_engines(m, b, paths, ENV)
    assert [e["path_id"] for e in chosen] == [p.id for p in paths]
    assert engines_usable(m, b, paths, ENV) == (True, "")
    for env, pattern in [
        ({**ENV, "tensorrt_version": "10.4.1"}, "TensorRT 10.3.0"),  # other TensorRT
        ({**ENV, "gpu": {"name": "NVIDIA A100", "compute_capability": "8.0"}}, "built for NVIDIA Orin"),  # other GPU
    ]:
        with pytest.raises(BundleError, match=pattern) as e:
            select_engines(m, b, paths, env)
        assert "oat-edge build-engines" in str(e.value)
        ok, why = engines_usable(m, b, paths, env)
        assert not ok and "build-engines" in why
    stale = json.loads(json.dumps(m))
    stale["engines"][0]["onnx_sha256"] = "0" * 64  # engine from an older export of this path
    with pytest.raises(BundleError, match="different ONNX"):
        select_engines(stale, b, paths, ENV)
    (b / m["engines"][1]["file"]).write_bytes(b"tampered")
    with pytest.raises(BundleError, match="sha256"):
        select_engines(m, b, paths, ENV)
    none = dict(m, engines=[])
    assert engines_usable(none, b, paths, ENV)[0] is False


def test_binding_shapes_and_profiles():
    from oat_edge.runtime.backends.tensorrt import binding_shapes, check_profile, max_batch

    io = IOSpec(input_shape=(3, 32, 32), num_classes=10, batch_min=1, batch_opt=8, batch_max=64)
    film = PathSpec(0, "a_w1", None, "film", "a", 1.0, None, 480)
    baked = PathSpec(1, "lam0.2_w1", None, "baked", "a", 1.0, 0.2, 0)
    assert binding_shapes(film, io, 8) == {"images": (8, 3, 32, 32), "logits": (8, 10), "film": (480,)}
    assert binding_shapes(baked, io, 1) == {"images": (1, 3, 32, 32), "logits": (1, 10)}
    entry = {"path_id": "a_w1", "profile": {"min": 1, "opt": 8, "max": 32}}
    check_profile(entry, 32)
    with pytest.raises(InputError, match="profile 1..32"):
        check_profile(entry, 33)
    assert max_batch([entry, {"profile": {"max": 16}}], io) == 16
    assert max_batch([{"profile": {"max": 128}}], io) == 64  # never above the bundle's own range


def test_tensorrt_backend_without_tensorrt_says_how_to_get_it(engine_bundle):
    from oat_edge.runtime import Runtime

    b, _ = engine_bundle
    with pytest.raises(ConfigError, match="TensorRT is not installed"):
        Runtime(b, backend="tensorrt")
    rt = Runtime(b, backend="auto")  # engines exist, but no TensorRT/GPU here: onnxruntime
    assert rt.backend_name == "onnxruntime"


def test_onnxruntime_sessions_do_not_spin_unless_asked():
    """A Runtime holds a session per path; their intra-op pools spin-waiting on each other's
    cores made path switches 2x slower (benchmarks/results/spin_wait.md), so spin-wait is off
    for every session it opens (paths and baked modes alike) unless backend_options asks."""
    import warnings

    from runtime_support import bundle_path

    from oat_edge.runtime import Runtime

    entry = "session.intra_op.allow_spinning"
    for options, want in (({}, "0"), ({"spin_wait": True}, "1")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unsigned test bundle
            rt = Runtime(bundle_path(), backend="onnxruntime", threads=2, backend_options=options, bake=True)
        try:
            runner = rt.backend
            assert {s.get_session_options().get_session_config_entry(entry) for s in runner._sessions} == {want}
            assert {o.get_session_config_entry(entry) for o in runner._path_options.values()} == {want}  # baked modes
            assert runner.describe()["spin_wait"] is (want == "1")
        finally:
            rt.close()


# --- the OpenVINO backend (optional extra) ------------------------------------------------------------
def _openvino_runtime(**kw):
    from oat_edge.runtime import Runtime
    from oat_edge.runtime.backends.openvino import loader

    ok, why = loader.available()
    if not ok:
        pytest.skip(why)
    from runtime_support import bundle_path

    return Runtime(bundle_path(), backend="openvino", threads=1, **kw)


def test_openvino_backend_modes_paths_and_bad_input():
    """Both path kinds (FiLM as an input, baked), set_mode semantics and bad input, at the fp32
    bar: the CPU plugin's default bf16/fp16 inference precision would miss it."""
    from oat_edge.errors import ModeError
    from oat_edge.mode import Mode

    from runtime_support import BAKED, reference_logits, sample_images

    rt = _openvino_runtime(bake=True)
    d = rt.backend.describe()
    assert d["backend"] == "openvino" and d["settings"]["INFERENCE_PRECISION_HINT"] == "f32"
    assert d["settings"]["PERFORMANCE_HINT"] == "LATENCY"
    x = sample_images(3, seed=5)
    for lam, w, kind in ((BAKED[0], 0.5, "baked"), (0.3, 0.5, "film"), (0.137, 1.0, "film"), (0.0, 0.75, "film")):
        rt.set_mode(lam, w)
        assert rt.path_for(lam, w).startswith("lam") == (kind == "baked")
        np.testing.assert_allclose(rt.infer(x), reference_logits(x, lam, w), atol=1e-4)
    # a mode baked at run time (background baking) runs on an OpenVINO model of the baked graph
    assert rt.bake(0.137, 1.0) and rt.wait_baked(0.137, 1.0, timeout=120)
    rt.set_mode(0.137, 1.0)
    np.testing.assert_allclose(rt.infer(x), reference_logits(x, 0.137, 1.0), atol=1e-4)
    rt.set_mode(0.3, 0.5)
    with pytest.raises(ModeError):
        rt.set_mode(1.5, 0.5)
    assert rt.mode == Mode(0.3, 0.5)  # a refused mode keeps the current one
    with pytest.raises(InputError):
        rt.infer(np.zeros((2, 3, 8, 8), np.float32))
    film = rt.film_vector(0.3, 0.5)
    with pytest.raises(InputError, match="FiLM"):
        rt.backend.infer_path("a_w0.5", x)
    naive = rt.backend.open_naive("a_w0.5")
    assert np.abs(naive(x, film=film) - rt.backend.infer_path("a_w0.5", x, film=film)).max() <= 1e-6
    rt.close()


def test_openvino_backend_concurrent_infer_while_switching():
    """Threads infer while the main thread switches modes: every result is the logits of the
    mode it reports (each thread has its own infer request per path)."""
    import threading

    from runtime_support import sample_images

    rt = _openvino_runtime()
    x = sample_images(2, seed=7)
    modes = [(0.0, 0.5), (0.2, 0.75), (0.61, 1.0), (1.0, 0.5)]
    expect = {}
    for lam, w in modes:
        rt.set_mode(lam, w)
        expect[rt.mode] = rt.infer(x)
    errors, done = [], [0]
    stop = threading.Event()

    def worker():
        while not stop.is_set():
            out, mode = rt.infer_with_mode(x)
            if np.abs(out - expect[mode]).max() > 1e-5:
                errors.append(mode)
            done[0] += 1

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(200):
        rt.set_mode(*modes[i % len(modes)])
    while done[0] < 60:  # wait for work, not for time
        stop.wait(0.01)
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    rt.close()


def test_openvino_hint_and_missing_package(monkeypatch):
    from oat_edge.errors import DependencyError
    from oat_edge.runtime.backends.openvino import loader

    assert loader.config(2, "throughput")["PERFORMANCE_HINT"] == "THROUGHPUT"
    with pytest.raises(ConfigError, match="hint"):
        loader.config(2, "fastest")
    import sys

    monkeypatch.setattr(loader, "_core", None)
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed: one clear error
    from runtime_support import bundle_path

    from oat_edge.runtime import Runtime

    with pytest.raises(DependencyError, match="oat-edge\\[openvino\\]"):
        Runtime(bundle_path(), backend="openvino", threads=1)
