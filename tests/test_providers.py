"""onnxruntime execution providers: Runtime(..., providers=[...]) and --providers on run/bench.
The plumbing runs here on the CPU provider; CUDA/TensorRT option building and the TensorRT EP
engine cache are checked without a GPU (the sessions themselves need onnxruntime-gpu)."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from oat_edge.errors import ConfigError, DependencyError
from oat_edge.onnxrt import provider_name, resolve_providers, trt_cache_dir

LEGACY = Path(__file__).parent / "fixtures" / "legacy_bundle"


def _runtime(bundle, **kw):
    from oat_edge.runtime import Runtime

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Runtime(bundle, threads=1, **kw)


def test_cpu_provider_runs_like_the_default():
    x = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
    plain = _runtime(LEGACY, backend="onnxruntime")
    ep = _runtime(LEGACY, providers=["cpu"])  # backend auto + providers -> onnxruntime
    assert ep.backend_name == "onnxruntime"
    assert ep.backend.describe()["providers"] == ["CPUExecutionProvider"]
    for lam, w in [(0.0, 1.0), (0.5, 0.5)]:
        plain.set_mode(lam, w)
        ep.set_mode(lam, w)
        assert np.array_equal(plain.infer(x), ep.infer(x))
    assert ep.device_key == plain.device_key  # CPU only: the same latency profile


def test_provider_names_and_errors():
    assert provider_name("cuda") == "CUDAExecutionProvider" and provider_name("TensorRT") == "TensorrtExecutionProvider"
    assert provider_name("CPUExecutionProvider") == "CPUExecutionProvider"
    with pytest.raises(ConfigError, match="unknown execution provider 'gpu'"):
        provider_name("gpu")
    with pytest.raises(ConfigError, match="providers apply to the onnxruntime backend"):
        _runtime(LEGACY, backend="torch", providers=["cpu"])
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(DependencyError, match="CUDAExecutionProvider is not available .* install onnxruntime-gpu"):
            _runtime(LEGACY, providers=["cuda", "cpu"])


def test_gpu_provider_options_and_the_tensorrt_cache_in_the_bundle(tmp_path, monkeypatch):
    """With a GPU build of onnxruntime (simulated by what it reports as available), the options
    are CUDA's device id and TensorRT's FP16 + engine cache inside engines/ with a stamp; a
    re-exported bundle (other ONNX hashes) gets its stale cache emptied."""
    import onnxruntime as ort

    bundle = tmp_path / "bundle"
    shutil.copytree(LEGACY, bundle)
    have = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: list(have))
    got = resolve_providers(["tensorrt", ("cuda", {"device_id": 1})], bundle, {"a_w1": "0" * 64}, device_id=0)
    names = [n for n, _ in got]
    assert names == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    trt, cuda = got[0][1], got[1][1]
    assert cuda == {"device_id": 1}
    cache = trt_cache_dir(bundle)
    assert cache == bundle / "engines" / "onnxruntime-trt" / f"ort{ort.__version__}"
    assert trt["trt_engine_cache_enable"] is True and trt["trt_engine_cache_path"] == str(cache)
    assert trt["trt_fp16_enable"] is True
    stamp = json.loads((cache / "stamp.json").read_text())
    assert stamp == {"onnxruntime": ort.__version__, "onnx_sha256": {"a_w1": "0" * 64}}
    (cache / "old.engine").write_bytes(b"engine of the old graphs")
    resolve_providers(["tensorrt"], bundle, {"a_w1": "1" * 64})
    assert not (cache / "old.engine").exists()
    assert json.loads((cache / "stamp.json").read_text())["onnx_sha256"] == {"a_w1": "1" * 64}
    with pytest.raises(ConfigError, match="listed twice"):
        resolve_providers(["cuda", "CUDAExecutionProvider"], bundle)
    # The cache folder does not disturb the bundle's integrity checks.
    monkeypatch.undo()
    rt = _runtime(bundle, providers=["cpu"])
    assert rt.infer(np.zeros((1, 1, 8, 8), np.float32)).shape == (1, 10)
    from oat_edge.cli import main

    assert main(["verify", str(bundle), "--threads", "1"]) == 0


def test_providers_on_the_command_line(tmp_path, capsys):
    from oat_edge.cli import main

    out = tmp_path / "run.json"
    images = tmp_path / "x.npy"
    np.save(images, np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32))
    assert main(["run", str(LEGACY), "--images", str(images), "--providers", "cpu", "--threads", "1",
                 "--json", str(out)]) == 0
    assert len(json.loads(out.read_text())["predictions"]) == 3
    capsys.readouterr()
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert main(["run", str(LEGACY), "--images", str(images), "--providers", "cuda:device_id=0"]) == 2
        err = capsys.readouterr().err.strip()
        assert "CUDAExecutionProvider is not available" in err and len(err.splitlines()) == 1
    with pytest.raises(SystemExit) as stop:  # argparse: not key=value
        main(["run", str(LEGACY), "--providers", "cuda:device_id"])
    assert stop.value.code == 2
    assert "provider options are key=value pairs" in capsys.readouterr().err


def test_bench_takes_providers(tmp_path):
    from oat_edge.bench.run import run_benchmark

    result = run_benchmark(LEGACY, providers=["cpu"], batches=[1], modes=["0.5:1"], warmup_s=0.01, duration_s=0.02,
                           rounds=1, threads=1, naive=False, footprint=False, progress=False)
    assert result["config"]["providers"] == ["cpu"]
    assert result["runtime"]["backend"]["providers"] == ["CPUExecutionProvider"]
