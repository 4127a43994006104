"""TensorRT engines: everything around the TensorRT calls, which cannot run on this machine.

TensorRT is not installable here, so ``build_engines``' orchestration is driven by a stand-in
builder (it plays TensorRT's part: bytes in, "engine" bytes out) while the code under test —
profiles, staleness, manifest update and its atomicity, the fp16 graph for TensorRT 11, the
no-TensorRT error — is the real one. The one test that builds a real engine is marked
``tensorrt`` and skips without it.
"""

import hashlib
import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto

from export_helpers import digits_images, tiny_bundle
from oat_edge.errors import BundleError, ConfigError
from oat_edge.export import load_film_tables, load_manifest
from oat_edge.bundle.film import film_vector
from oat_edge.bundle.engines import check_engine, engine_device_key, find_engine
from oat_edge.bundle.manifest import parse_batch_profile
from oat_edge.export.targets.tensorrt import build_engines
from oat_edge.trt_engine_build import convert_to_fp16

GPU = {"name": "Orin (nvgpu)", "compute_capability": "8.7"}


class StandInBuilder:
    """Plays TensorRT in orchestration tests: records calls, returns deterministic bytes."""

    def __init__(self, version="10.3.0", fail_on_call=None, fp16_method="builder-flag"):
        self.version, self.fail_on_call, self.fp16_method = version, fail_on_call, fp16_method
        self.calls = []

    def build(self, onnx_bytes, dynamic_inputs, precision, workspace_mb=None, timing_cache=None):
        self.calls.append({"onnx": onnx_bytes, "inputs": dynamic_inputs, "precision": precision,
                           "workspace_mb": workspace_mb, "cache_in": timing_cache})
        if self.fail_on_call == len(self.calls):
            raise BundleError("simulated TensorRT build failure")
        plan = b"PLAN" + hashlib.sha256(onnx_bytes + precision.encode() + self.version.encode()).digest()
        return plan, (timing_cache or b"cache") + b"+"


@pytest.fixture
def bundle(tmp_path_factory, tmp_path):
    dest = tmp_path / "bundle"
    shutil.copytree(tiny_bundle(tmp_path_factory), dest)
    return dest


def snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- profiles ------------------------------------------------------------------------------
@pytest.mark.parametrize("text,expected", [("1:8:64", (1, 8, 64)), ("4:4:4", (4, 4, 4)), ((1, 2, 3), (1, 2, 3)),
                                           ({"min": 1, "opt": 1, "max": 16}, (1, 1, 16)), (" 2 : 8 : 32 ", (2, 8, 32))])
def test_batch_profile_parsing(text, expected):
    assert parse_batch_profile(text) == expected


@pytest.mark.parametrize("text", ["8:1:64", "0:1:8", "1:8", "a:b:c", "1:8:64:128", "", (1, 9, 8)])
def test_bad_batch_profiles(text):
    with pytest.raises(ConfigError):
        parse_batch_profile(text)


# --- orchestration ---------------------------------------------------------------------------
def test_build_records_every_engine_in_the_manifest(bundle, tmp_path):
    builder = StandInBuilder()
    cache = tmp_path / "timing.cache"
    results = build_engines(bundle, precision="fp16", timing_cache=cache, workspace_mb=512, progress=False,
                            builder=builder, gpu=GPU)
    manifest = load_manifest(bundle)  # engine files hashed too
    ids = [e["id"] for e in manifest["paths"]] + [e["id"] for e in manifest["baked"]]
    assert [r["path_id"] for r in results] == ids and {r["action"] for r in results} == {"built"}
    device = engine_device_key(GPU, "10.3.0")
    assert device == "orin-nvgpu-sm87-trt10.3.0"
    onnx_sha = {e["id"]: e["sha256"] for e in manifest["paths"] + manifest["baked"]}
    for e in manifest["engines"]:
        assert e["file"] == f"engines/{device}/{e['path_id']}.fp16.engine"
        assert e["tensorrt_version"] == "10.3.0" and e["gpu_name"] == GPU["name"] and e["compute_capability"] == "8.7"
        assert e["precision"] == "fp16" and e["fp16_method"] == "builder-flag"
        assert e["profile"] == {"min": 1, "opt": 8, "max": 64} and e["onnx_sha256"] == onnx_sha[e["path_id"]]
        assert check_engine(e, "10.3.0", GPU, onnx_sha[e["path_id"]], bundle).ok
    # the builder saw the fp32 graph (TensorRT 10: FP16 flag), the profile of `images`, the cache chain
    first = builder.calls[0]
    assert first["inputs"] == {"images": ((1, 1, 8, 8), (8, 1, 8, 8), (64, 1, 8, 8))}
    assert first["workspace_mb"] == 512 and first["cache_in"] is None
    assert builder.calls[1]["cache_in"] == b"cache+"
    assert onnx.load_from_string(first["onnx"]).graph.initializer[0].data_type == TensorProto.FLOAT
    assert cache.read_bytes() == b"cache" + b"+" * len(ids)


def test_a_batch_profile_without_opt_builds_at_min(bundle):
    """A manifest's batch may leave out ``opt`` (it then means min); build-engines reads the
    typed manifest, which fills that in."""
    mpath = bundle / "manifest.json"
    manifest = json.loads(mpath.read_text())
    del manifest["batch"]["opt"]
    mpath.write_text(json.dumps(manifest))
    builder = StandInBuilder()
    build_engines(bundle, progress=False, builder=builder, gpu=GPU)
    lo, hi = manifest["batch"]["min"], manifest["batch"]["max"]
    assert builder.calls[0]["inputs"] == {"images": ((lo, 1, 8, 8), (lo, 1, 8, 8), (hi, 1, 8, 8))}
    assert {e["profile"]["opt"] for e in load_manifest(bundle)["engines"]} == {lo}


def test_current_engines_are_kept_stale_ones_rebuilt(bundle):
    build_engines(bundle, progress=False, builder=StandInBuilder(), gpu=GPU)
    again = StandInBuilder()
    assert {r["action"] for r in build_engines(bundle, progress=False, builder=again, gpu=GPU)} == {"kept"}
    assert again.calls == []
    # a path re-exported since (its ONNX hash no longer matches) and a damaged engine file
    mpath = bundle / "manifest.json"
    manifest = json.loads(mpath.read_text())
    manifest["engines"][0]["onnx_sha256"] = "0" * 64
    mpath.write_text(json.dumps(manifest))
    damaged = bundle / manifest["engines"][1]["file"]
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"!")
    with pytest.raises(BundleError, match="build-engines"):
        load_manifest(bundle)  # loaders refuse it, pointing at the fix
    results = build_engines(bundle, progress=False, builder=StandInBuilder(), gpu=GPU)
    assert [r["action"] for r in results][:3] == ["built", "built", "kept"]
    load_manifest(bundle)
    forced = build_engines(bundle, progress=False, builder=StandInBuilder(), gpu=GPU, force=True)
    assert {r["action"] for r in forced} == {"built"}
    # another profile is another engine
    reprofiled = build_engines(bundle, batch="1:1:8", progress=False, builder=StandInBuilder(), gpu=GPU)
    assert {r["action"] for r in reprofiled} == {"built"}
    assert {json.dumps(e["profile"]) for e in load_manifest(bundle)["engines"]} == {'{"min": 1, "opt": 1, "max": 8}'}


def test_other_tensorrt_or_gpu_gets_its_own_engines(bundle):
    build_engines(bundle, progress=False, builder=StandInBuilder("10.3.0"), gpu=GPU)
    build_engines(bundle, progress=False, builder=StandInBuilder("10.7.0"), gpu=GPU)
    build_engines(bundle, precision="fp32", progress=False, builder=StandInBuilder("10.3.0"), gpu=GPU)
    manifest = load_manifest(bundle)
    n = len(manifest["paths"]) + len(manifest["baked"])
    assert len(manifest["engines"]) == 3 * n
    assert len({e["file"] for e in manifest["engines"]}) == 3 * n


def test_failed_build_leaves_the_bundle_as_it_was(bundle):
    before = snapshot(bundle)
    with pytest.raises(BundleError, match="simulated"):
        build_engines(bundle, progress=False, builder=StandInBuilder(fail_on_call=3), gpu=GPU)
    assert snapshot(bundle) == before and not (bundle / "engines").exists()
    # with engines already present, a failed rebuild keeps them and the manifest untouched
    build_engines(bundle, progress=False, builder=StandInBuilder(), gpu=GPU)
    before = snapshot(bundle)
    with pytest.raises(BundleError):
        build_engines(bundle, progress=False, builder=StandInBuilder(fail_on_call=2), gpu=GPU, force=True)
    assert snapshot(bundle) == before
    assert [p.name for p in (bundle / "engines").iterdir() if p.name.startswith(".staging")] == []


def test_tensorrt_11_builds_parse_an_fp16_graph(bundle):
    builder = StandInBuilder(version="11.2.0", fp16_method="fp16-onnx")
    build_engines(bundle, progress=False, builder=builder, gpu=GPU)
    graph = onnx.load_from_string(builder.calls[0]["onnx"])
    assert {i.data_type for i in graph.graph.initializer if i.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)} == {TensorProto.FLOAT16}
    assert [i.type.tensor_type.elem_type for i in graph.graph.input] == [TensorProto.FLOAT, TensorProto.FLOAT]
    assert load_manifest(bundle)["engines"][0]["fp16_method"] == "fp16-onnx"


def test_no_gpu_is_a_clear_error(bundle):
    with pytest.raises(ConfigError, match="GPU"):
        build_engines(bundle, progress=False, builder=StandInBuilder(), gpu={"name": "unknown", "compute_capability": "unknown"})


@pytest.mark.parametrize("precision", ["int8", "bf16"])
def test_unknown_precision(bundle, precision):
    with pytest.raises(ConfigError):
        build_engines(bundle, precision=precision, builder=StandInBuilder(), gpu=GPU)


# --- staleness -------------------------------------------------------------------------------
ENTRY = {"path_id": "a_w0.5", "file": "engines/x/a_w0.5.fp16.engine", "sha256": "e" * 64, "tensorrt_version": "10.3.0",
         "gpu_name": "Orin", "compute_capability": "8.7", "precision": "fp16",
         "profile": {"min": 1, "opt": 8, "max": 64}, "onnx_sha256": "a" * 64}


@pytest.mark.parametrize("change,trt,gpu,onnx_sha,pattern", [
    ({}, "10.7.0", GPU, "a" * 64, "TensorRT 10.3.0, this machine has 10.7.0"),
    ({}, "10.3.0", {"name": "NVIDIA GeForce RTX 3080", "compute_capability": "8.6"}, "a" * 64, "built for Orin"),
    ({}, "10.3.0", {"name": "NVIDIA A10", "compute_capability": "8.7"}, "a" * 64, "built for Orin"),
    ({}, "10.3.0", GPU, "b" * 64, "different ONNX"),
    ({}, "10.3.0", GPU, None, "no longer has"),
    ({"gpu_name": None}, "10.3.0", {"name": "unknown", "compute_capability": "unknown"}, "a" * 64, "identify"),
])
def test_stale_and_foreign_engines(change, trt, gpu, onnx_sha, pattern):
    entry = {**ENTRY, **change}
    check = check_engine(entry, trt, gpu, onnx_sha)
    assert not check.ok and not check and pattern in check.reason
    if "identify" not in pattern:
        assert "oat-edge build-engines" in check.reason


def test_current_engine_and_name_spellings():
    assert check_engine(ENTRY, "10.3.0", {"name": "NVIDIA Orin", "compute_capability": "8.7"}, "a" * 64).ok
    assert check_engine(ENTRY, "10.3.0", GPU, "a" * 64)  # "Orin (nvgpu)" from cudart is the same GPU
    incomplete = {k: v for k, v in ENTRY.items() if k != "onnx_sha256"}
    assert "lacks" in check_engine(incomplete, "10.3.0", GPU, "a" * 64).reason


def test_find_engine_for_loaders(bundle):
    build_engines(bundle, progress=False, builder=StandInBuilder(), gpu=GPU)
    build_engines(bundle, precision="fp32", progress=False, builder=StandInBuilder(), gpu=GPU)
    manifest = load_manifest(bundle)
    assert find_engine(manifest, bundle, "a_w0.5", "10.3.0", GPU)["precision"] == "fp16"
    assert find_engine(manifest, bundle, "a_w0.5", "10.3.0", GPU, "fp32")["precision"] == "fp32"
    with pytest.raises(BundleError, match="TensorRT 10.3.0, this machine has 10.8.0.*build-engines"):
        find_engine(manifest, bundle, "a_w0.5", "10.8.0", GPU)
    with pytest.raises(BundleError, match="no .*engine for nope"):
        find_engine(manifest, bundle, "nope", "10.3.0", GPU)


# --- fp16 graph -------------------------------------------------------------------------------
def test_fp16_conversion_runs_in_onnxruntime_with_small_error(tmp_path_factory):
    bundle = tiny_bundle(tmp_path_factory)
    manifest = load_manifest(bundle)
    tables = load_film_tables(bundle / "film.npz")
    x = digits_images(64)
    for entry in (manifest["paths"][-1], manifest["baked"][-1]):
        fp32 = onnx.load(bundle / entry["file"])
        fp16 = convert_to_fp16(fp32)
        assert [i.type.tensor_type.elem_type for i in fp16.graph.input] == [TensorProto.FLOAT] * len(fp32.graph.input)
        assert fp16.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
        assert all(i.data_type != TensorProto.FLOAT for i in fp16.graph.initializer)
        feed = {"images": x}
        if "film_size" in entry:
            feed["film"] = film_vector(tables, 0.37, entry["width"])
        ref = ort.InferenceSession(fp32.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
        out = ort.InferenceSession(fp16.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
        assert out.dtype == np.float32
        err = np.abs(out - ref).max() / np.abs(ref).max()
        assert 0 < err < 1e-2, err  # fp16 really ran (not zero) and stays close
        assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.95


def test_fp16_conversion_refuses_weights_out_of_range():
    from onnx import helper, numpy_helper

    w = numpy_helper.from_array(np.array([[1e6]], dtype=np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])], [w])
    with pytest.raises(BundleError, match="float16 range"):
        convert_to_fp16(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


# --- without TensorRT ---------------------------------------------------------------------------
def _no_tensorrt():
    try:
        import tensorrt  # noqa: F401
        return False
    except ImportError:
        return True


@pytest.mark.skipif(not _no_tensorrt(), reason="TensorRT is installed here")
def test_without_tensorrt_one_clear_error(bundle):
    before = snapshot(bundle)
    with pytest.raises(ConfigError, match="TensorRT is not installed"):
        build_engines(bundle, progress=False)
    r = subprocess.run([sys.executable, "-m", "oat_edge", "build-engines", str(bundle)], capture_output=True, text=True)
    assert r.returncode == 2 and "TensorRT is not installed" in r.stderr and r.stderr.count("\n") == 1
    assert snapshot(bundle) == before


@pytest.mark.skipif(not _no_tensorrt(), reason="TensorRT is installed here")
def test_verify_without_tensorrt_checks_engine_files_but_not_staleness(bundle):
    from oat_edge.runtime.verify import verify_bundle

    build_engines(bundle, progress=False, builder=StandInBuilder(), gpu=GPU)
    report = verify_bundle(bundle, backend="none")
    assert report["engines"] and all(e["ok"] is None and "TensorRT is not installed" in e["reason"] for e in report["engines"])
    engine = bundle / load_manifest(bundle)["engines"][0]["file"]
    engine.write_bytes(b"garbage")
    with pytest.raises(BundleError, match="build-engines"):
        verify_bundle(bundle, backend="none")


@pytest.mark.tensorrt
def test_real_tensorrt_build(bundle):
    """Runs only where TensorRT and a GPU exist (never on the development machine)."""
    trt = pytest.importorskip("tensorrt")
    from oat_edge.host import gpu_info

    if gpu_info()["name"] == "unknown":
        pytest.skip("no CUDA GPU")
    build_engines(bundle, precision="fp16", batch="1:4:8", progress=False)
    manifest = load_manifest(bundle)
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    for e in manifest["engines"]:
        engine = runtime.deserialize_cuda_engine((bundle / e["file"]).read_bytes())
        assert engine is not None
        names = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
        assert {"images", "logits"} <= names
