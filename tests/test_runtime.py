"""Runtime on a real exported bundle: parity with the PyTorch model in every mode, mode routing,
O(1) switching without allocation, bad modes and bad images, torch tensors, no torch import
for the onnxruntime path, tampered bundles, and the extension against the fallback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
import pytest

from oat_edge.errors import BundleError, ConfigError, InputError, ModeError
from oat_edge.mode import Mode
from oat_edge.runtime import Runtime

from runtime_support import (BAKED, INPUT_SHAPE, OFF_GRID_LAMBDAS, PARITY_LAMBDAS, WIDTHS, backend_params,
                             bundle_path, copy_bundle, impl_params, reference_logits, reference_model,
                             sample_images)

PARITY_TOL = 1e-4

_cache = {}


def runtime(backend="onnxruntime", impl="auto", **kw) -> Runtime:
    """One Runtime per (backend, impl) for the read-only tests of this module."""
    key = (backend, impl, tuple(sorted(kw.items())))
    if key not in _cache:
        _cache[key] = Runtime(bundle_path(), backend=backend, impl=impl, **kw)
    return _cache[key]


# --- parity ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", impl_params())
@pytest.mark.parametrize("backend", backend_params())
def test_parity_with_pytorch_model_in_every_mode(backend, impl):
    """S1 ∪ S3 (training and unseen λ; grid rows and baked paths) plus off-grid λ (exact FiLM
    computation), at every width: the runtime's logits equal the checkpoint's PyTorch model's."""
    rt = runtime(backend, impl)
    x = sample_images(5, seed=1)
    worst, n = 0.0, 0
    for lam in PARITY_LAMBDAS + OFF_GRID_LAMBDAS:
        for w in WIDTHS:
            rt.set_mode(lam, w)
            out = rt.infer(x)
            ref = reference_logits(x, lam, w)
            assert out.shape == (5, 10) and out.dtype == np.float32
            diff = float(np.abs(out - ref).max())
            assert diff <= PARITY_TOL, f"{backend}/{impl} λ={lam} w={w}: max |Δ| {diff:.3g}"
            assert np.array_equal(out.argmax(1), ref.argmax(1))
            worst, n = max(worst, diff), n + 1
    assert n == len(PARITY_LAMBDAS + OFF_GRID_LAMBDAS) * len(WIDTHS)
    print(f"{backend}/{impl}: {n} modes, worst |Δ logits| = {worst:.3g}")


def test_modes_differ_far_beyond_the_parity_tolerance():
    """Guards the parity test: if all modes gave the same logits it would prove nothing."""
    x = sample_images(5, seed=1)
    ref = {(lam, w): reference_logits(x, lam, w) for lam in (0.0, 0.1, 0.123, 0.15, 1.0) for w in (0.5, 1.0)}
    keys = list(ref)
    gaps = [np.abs(ref[a] - ref[b]).max() for i, a in enumerate(keys) for b in keys[i + 1:]]
    assert min(gaps) > 100 * PARITY_TOL


@pytest.mark.parametrize("impl", impl_params())
def test_film_vectors_equal_the_model_generators(impl):
    import torch

    rt = runtime(impl=impl)
    model = reference_model()
    for w in WIDTHS:
        for lam in (0.0, 0.2, 0.25, 1.0) + OFF_GRID_LAMBDAS:
            with torch.no_grad():
                ref = model.film_vectors([lam], w)[0].numpy()
            np.testing.assert_allclose(rt.film_vector(lam, w), ref, rtol=1e-5, atol=1e-6)


def test_extension_and_fallback_give_identical_results():
    ext, py = runtime(impl="ext") if "ext" in _impls() else None, runtime(impl="python")
    if ext is None:
        pytest.skip("extension not built")
    x = sample_images(4, seed=2)
    for lam in (0.0, 0.1, 0.2, 0.35) + OFF_GRID_LAMBDAS:
        for w in WIDTHS:
            ext.set_mode(lam, w)
            py.set_mode(lam, w)
            # float32 rounding of logits of order 1-10 (a few ulps), not a different computation
            np.testing.assert_allclose(ext.infer(x), py.infer(x), rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(ext.film_vector(lam, w), py.film_vector(lam, w), rtol=1e-6, atol=1e-6)


def _impls():
    return [p.values[0] for p in impl_params() if not p.marks]


# --- modes --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", impl_params())
def test_set_mode_routes_to_the_right_path(impl):
    rt = runtime(impl=impl)
    ids = [p.id for p in rt.paths]

    def current_path():
        return ids[rt._modes.reg.current()[1]]

    rt.set_mode(0.0, 0.5)
    assert current_path() == "c_w0.5" == rt.path_for(0.0, 0.5) and rt.mode == Mode(0.0, 0.5)
    rt.set_mode(BAKED[0], 0.75)
    assert current_path() == f"lam{BAKED[0]:g}_w0.75" and rt._modes.reg.current()[2] == -1  # baked: no FiLM input
    rt.set_mode(BAKED[0] + 1e-12, 0.75)  # within the 1e-9 tolerance of the baked λ
    assert current_path() == f"lam{BAKED[0]:g}_w0.75"
    rt.set_mode(0.123, 1)
    assert current_path() == "a_w1" and rt.mode == Mode(0.123, 1.0)
    rt.set_mode(Mode(0.3, 0.5))
    assert rt.mode == Mode(0.3, 0.5)
    assert rt.modes == [Mode(lam, w) for w in WIDTHS for lam in rt._modes.film.grid_list]  # no calibration


@pytest.mark.parametrize("impl", impl_params())
@pytest.mark.parametrize("lam,width", [(-0.1, 1.0), (1.01, 1.0), (float("nan"), 1.0), (float("inf"), 1.0),
                                       ("high", 1.0), (None, 1.0), (0.5, 0.6), (0.5, 2.0), (0.5, "wide"),
                                       (0.5, None)])
def test_bad_modes_raise_mode_error_and_keep_the_current_mode(impl, lam, width):
    rt = runtime(impl=impl)
    rt.set_mode(0.3, 0.75)
    with pytest.raises(ModeError):
        rt.set_mode(lam, width)
    assert rt.mode == Mode(0.3, 0.75)
    rt.infer(sample_images(1))


@pytest.mark.parametrize("impl", impl_params())
def test_async_offgrid_set_mode_goes_live_with_the_same_logits(impl):
    """offgrid="async": set_mode queues an off-grid λ; once live (wait_mode) the mode and its
    logits are bit-identical to the synchronous policy's; a later switch always wins."""
    sync = runtime(impl=impl)
    images = sample_images(4, seed=3)
    with Runtime(bundle_path(), backend="onnxruntime", impl=impl, offgrid="async") as rt:
        assert rt.describe()["offgrid"] == "async"
        for lam in OFF_GRID_LAMBDAS:
            for w in WIDTHS:
                rt.set_mode(lam, w)
                assert rt.wait_mode(timeout=10) and not rt.mode_pending
                sync.set_mode(lam, w)
                out, mode = rt.infer_with_mode(images)
                assert mode == Mode(lam, w) and np.array_equal(out, sync.infer(images))
        for i in range(40):  # an off-grid request overtaken by a grid switch (no sleep: races the worker)
            rt.set_mode(0.123 + i * 1e-4, 0.5)
            rt.set_mode(0.25, 1.0)
            assert rt.wait_mode(timeout=10) and rt.mode == Mode(0.25, 1.0)
        for i in range(40):  # and by another off-grid request
            rt.set_mode(0.31 + i * 1e-4, 0.5)
            rt.set_mode(0.777, 0.75)
            assert rt.wait_mode(timeout=10) and rt.mode == Mode(0.777, 0.75)
        with pytest.raises(ModeError):
            rt.set_mode(1.5, 1.0)  # bad modes are still refused by the call itself
        stats = rt.offgrid_stats()
        assert stats["policy"] == "async" and stats["published"] >= len(OFF_GRID_LAMBDAS) * len(WIDTHS) + 40
        assert stats["failures"] == 0 and stats["live_ms_p50"] > 0
    with pytest.raises(ConfigError):
        Runtime(bundle_path(), backend="onnxruntime", offgrid="later")


def test_initial_mode_and_describe():
    rt = Runtime(bundle_path(), backend="onnxruntime", mode=(0.0, 0.5))
    assert rt.mode == Mode(0.0, 0.5)
    d = rt.describe()
    assert d["backend"] == "onnxruntime" and d["device_key"] == rt.device_key and d["impl"] in ("ext", "python")
    with Runtime(bundle_path(), backend="onnxruntime") as rt2:
        assert rt2.mode == Mode(1.0, max(WIDTHS))  # default: most robust training λ, widest


@pytest.mark.parametrize("impl", impl_params())
def test_set_mode_creates_no_session_and_allocates_no_buffers(impl, monkeypatch):
    import onnxruntime as ort

    rt = Runtime(bundle_path(), backend="onnxruntime", impl=impl)

    def no_new_sessions(*a, **k):
        raise AssertionError("a session was created after load")

    monkeypatch.setattr(ort, "InferenceSession", no_new_sessions)
    modes = [(lam, w) for lam in (0.0, 0.1, BAKED[0], 0.25) + OFF_GRID_LAMBDAS for w in WIDTHS]
    x = sample_images(1)
    for m in modes:  # warm up: every mode once, with an inference
        rt.set_mode(*m)
        rt.infer(x)
    # Only small Python objects (call frames, a tuple) may come and go: no buffer. (The FiLM
    # vectors of this tiny model are below this bound; test_extension checks the register on
    # 32 KB vectors.)
    bound = 4096
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for _ in range(20):
            for m in modes:
                rt.set_mode(*m)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak < bound, f"set_mode peak allocation {peak} B"


# --- inputs --------------------------------------------------------------------------------------------
GOOD = sample_images(2, seed=3)


def _with(value, index=(1, 0, 4, 4)):
    x = GOOD.copy()
    x[index] = value
    return x


BAD_INPUTS = {
    "single_image_3d": (GOOD[0], "images\\[None\\]"),
    "wrong_channels": (np.zeros((2, 3, 8, 8), np.float32), "shape \\[batch, 1, 8, 8\\]"),
    "wrong_hw": (np.zeros((2, 1, 9, 8), np.float32), "shape"),
    "flat": (np.zeros((2, 64), np.float32), "shape"),
    "empty_batch": (np.zeros((0, 1, 8, 8), np.float32), "batch size 0"),
    "batch_too_large": (np.zeros((17, 1, 8, 8), np.float32), "batch range 1..16"),
    "uint8_pixels": ((GOOD * 255).astype(np.uint8), "/ 255"),
    "int64": (np.zeros((2, 1, 8, 8), np.int64), "float32"),
    "bool": (np.zeros((2, 1, 8, 8), bool), "float32"),
    "complex": (np.zeros((2, 1, 8, 8), np.complex64), "float32"),
    "nan": (_with(np.nan), "NaN"),
    "inf": (_with(np.inf), "infinite"),
    "minus_inf": (_with(-np.inf), "infinite"),
    "above_one_0_255": (GOOD * 255, "divide by 255"),
    "negative_normalised": (GOOD - 0.5, "normalised"),
    "slightly_above_one": (_with(1.0001), "\\[0, 1\\]"),
    "python_list": (GOOD.tolist(), "numpy array or a torch tensor"),
}


@pytest.mark.parametrize("impl", impl_params())
@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_images_raise_one_clear_input_error(impl, name):
    rt = runtime(impl=impl)
    images, pattern = BAD_INPUTS[name]
    with pytest.raises(InputError, match=pattern):
        rt.infer(images)
    assert rt.infer(GOOD).shape == (2, 10)  # the runtime is unharmed


@pytest.mark.parametrize("impl", impl_params())
def test_float64_float16_and_views_are_accepted(impl):
    rt = runtime(impl=impl)
    rt.set_mode(0.3, 1.0)
    ref = rt.infer(GOOD)
    assert np.abs(rt.infer(GOOD.astype(np.float64)) - ref).max() <= 1e-6
    assert np.abs(rt.infer(GOOD.astype(np.float16)) - ref).max() <= 1e-2  # fp16 rounding of the pixels
    strided = np.repeat(GOOD, 2, axis=0)[::2]  # non-contiguous view
    assert np.abs(rt.infer(strided) - ref).max() == 0.0
    readonly = GOOD.copy()
    readonly.flags.writeable = False
    assert np.abs(rt.infer(readonly) - ref).max() == 0.0
    boundary = np.zeros((1,) + INPUT_SHAPE, np.float32)
    boundary[0, 0, 0, :2] = (0.0, 1.0)
    rt.infer(boundary)  # 0 and 1 themselves are valid


@pytest.mark.parametrize("backend", backend_params())
def test_torch_tensors_in_and_out(backend):
    import torch

    rt = runtime(backend)
    rt.set_mode(0.25, 0.75)
    ref = rt.infer(GOOD)
    t = torch.from_numpy(GOOD.copy())
    out = rt.infer(t)
    assert isinstance(out, torch.Tensor) and out.device.type == "cpu"
    assert np.abs(out.numpy() - ref).max() <= 1e-6
    view = rt._checker.torch_cpu(t)
    assert np.shares_memory(view, t.numpy())  # CPU tensors are read in place, not copied
    assert np.abs(rt.infer(t.double()).numpy() - ref).max() <= 1e-6
    with pytest.raises(InputError, match="/ 255"):
        rt.infer((t * 255).to(torch.uint8))
    with pytest.raises(InputError, match="NaN"):
        rt.infer(torch.full_like(t, float("nan")))
    rt.infer(t.requires_grad_(True))  # autograd tensors are detached, not refused


def test_onnxruntime_path_does_not_import_torch():
    code = textwrap.dedent(f"""
        import sys, numpy as np
        from oat_edge.runtime import Runtime
        rt = Runtime({str(bundle_path())!r}, backend="onnxruntime")
        x = np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)
        for lam, w in [(0.0, 0.5), (0.2, 0.75), (0.123, 1.0), (1.0, 1.0)]:
            rt.set_mode(lam, w)
            rt.infer(x)
        rt.select(max_latency_ms=1e4)
        rt.film_vector(0.456, 0.5)
        bad = [m for m in ("torch", "tensorrt", "pycuda", "onnx") if m in sys.modules]
        print("IMPL", rt.impl, "LOADED", bad)
    """)
    for env_extra in ({}, {"OATEDGE_NO_EXT": "1"}):
        env = {**os.environ, **env_extra}
        env.pop("OATEDGE_REQUIRE_EXT", None) if env_extra else None
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 0, r.stderr
        assert "LOADED []" in r.stdout, r.stdout
        if env_extra:
            assert "IMPL python" in r.stdout


# --- backends and bundles ---------------------------------------------------------------------------------
def test_auto_backend_without_tensorrt_is_onnxruntime_on_cpu():
    rt = runtime("auto")
    assert rt.backend_name == "onnxruntime" and rt.device == "cpu"
    assert "TensorRT" in rt.backend_reason or "GPU" in rt.backend_reason
    assert rt.device_key.startswith("cpu-") and rt.device_key.endswith(f"onnxruntime-t{rt.threads}")


def test_backend_and_device_arguments_are_checked():
    with pytest.raises(ConfigError, match="unknown backend"):
        Runtime(bundle_path(), backend="tflite")
    with pytest.raises(ConfigError, match="CPU"):
        Runtime(bundle_path(), backend="onnxruntime", device="cuda")
    with pytest.raises(ConfigError):
        Runtime(bundle_path(), backend="torch", device="cuda")  # no GPU here
    with pytest.raises(ConfigError, match="TensorRT is not installed"):
        Runtime(bundle_path(), backend="tensorrt")


def test_threads_reach_onnxruntime():
    rt = Runtime(bundle_path(), backend="onnxruntime", threads=1)
    assert rt.threads == 1 and rt.backend._options.intra_op_num_threads == 1
    assert rt.device_key.endswith("-t1")


def test_tampered_bundle_is_refused(tmp_path):
    b = copy_bundle(tmp_path)
    onnx_file = b / "paths" / "a_w0.5.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        Runtime(b, backend="onnxruntime")


def test_film_table_inconsistent_with_manifest_is_refused(tmp_path):
    from oat_edge.fileio import sha256_file

    b = copy_bundle(tmp_path)
    with np.load(b / "film.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "table_w0.5"}
    np.savez(b / "film.npz", **arrays)
    m = json.loads((b / "manifest.json").read_text())
    m["film"]["sha256"] = sha256_file(b / "film.npz")  # consistent hashes, wrong content
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="table_w0.5"):
        Runtime(b, backend="onnxruntime")


def test_missing_bundle_is_a_bundle_error(tmp_path):
    with pytest.raises(BundleError):
        Runtime(tmp_path / "nothing-here")


def test_infer_path_and_open_naive_for_tools():
    rt = runtime()
    x = sample_images(2)
    film = rt.film_vector(0.3, 0.5)
    via_path = rt.backend.infer_path("a_w0.5", x, film=film)
    np.testing.assert_allclose(via_path, reference_logits(x, 0.3, 0.5), atol=PARITY_TOL)
    naive = rt.backend.open_naive("a_w0.5")
    assert np.abs(naive(x, film=film) - via_path).max() <= 1e-6
    baked = rt.backend.infer_path(f"lam{BAKED[0]:g}_w0.5", x)
    np.testing.assert_allclose(baked, reference_logits(x, BAKED[0], 0.5), atol=PARITY_TOL)
    with pytest.raises(InputError, match="FiLM"):
        rt.backend.infer_path("a_w0.5", x)
    with pytest.raises(InputError, match="baked"):
        rt.backend.infer_path(f"lam{BAKED[0]:g}_w0.5", x, film=film)
    with pytest.raises(BundleError, match="no path"):
        rt.backend.infer_path("a_w0.3", x, film=film)
