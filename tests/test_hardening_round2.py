"""Hardening, round 2: a red-team pass as a hostile bundle author, a careless user and a robot
under load. One test (or one parametrised family) per finding; the FiLM site tables are in
tests/test_film_twins.py and tests/test_hardening_fuzz.py."""

from __future__ import annotations

import shutil

import numpy as np

import pytest

from hardening_support import bundle, checkpoint, copy_bundle
from oat_edge.cli import main
from runtime_support import impl_params

pytestmark = pytest.mark.filterwarnings("ignore::oat_edge.bundle.signature.UnsignedBundleWarning")


def one_error_line(capsys, command):
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith(f"oat-edge {command}: error:"), err
    return err[0]


def _tree(path):
    return sorted((str(p.relative_to(path)), p.read_bytes() if p.is_file() else None) for p in path.rglob("*"))


# --- export --force replaces only a bundle ---------------------------------------------------------------
def test_force_keeps_a_folder_of_user_files(tmp_path, capsys):
    d = tmp_path / "d"
    d.mkdir()
    (d / "thesis.txt").write_text("precious")
    assert main(["export", str(checkpoint()), "-o", str(d), "--force", "--no-progress"]) == 2
    assert "not an oat-edge bundle" in one_error_line(capsys, "export")
    assert (d / "thesis.txt").read_text() == "precious" and sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_force_keeps_a_bundle_with_user_files_beside_it(tmp_path, capsys):
    b = copy_bundle(tmp_path)
    (b / "notes.txt").write_text("mine")
    before = _tree(b)
    assert main(["export", str(checkpoint()), "-o", str(b), "--force", "--no-progress"]) == 2
    assert "notes.txt" in one_error_line(capsys, "export")
    assert _tree(b) == before


@pytest.mark.parametrize("where", ["parent", "bundle"])
def test_force_never_deletes_its_input_checkpoint(tmp_path, capsys, where):
    if where == "parent":  # export parent/sub/ckpt.pt -o parent --force
        out = tmp_path / "parent"
        (out / "sub").mkdir(parents=True)
        ckpt = out / "sub" / "ckpt.pt"
    else:  # the checkpoint kept inside the bundle it was exported to
        out = copy_bundle(tmp_path)
        ckpt = out / "ckpt.pt"
    shutil.copy(checkpoint(), ckpt)
    before = _tree(out)
    assert main(["export", str(ckpt), "-o", str(out), "--force", "--no-progress"]) == 2
    assert "input checkpoint" in one_error_line(capsys, "export")
    assert _tree(out) == before


def test_force_into_a_folder_of_a_bundle_keeps_the_bundle(tmp_path, capsys):
    b = copy_bundle(tmp_path)
    before = _tree(b)
    assert main(["export", str(checkpoint()), "-o", str(b / "paths"), "--force", "--no-progress"]) == 2
    assert "not an oat-edge bundle" in one_error_line(capsys, "export")
    assert _tree(b) == before


def test_force_replaces_an_older_bundle(tmp_path):
    from oat_edge.bundle.manifest import load_manifest
    from oat_edge.export import export_bundle

    b = copy_bundle(tmp_path)
    (b / "latency").mkdir()
    (b / "latency" / "old-device.json").write_text("{}")
    export_bundle(checkpoint(), b, widths=[1.0], force=True, tensorrt="off", progress=False, parity_images=8)
    assert [e["id"] for e in load_manifest(b)["paths"]] == ["c_w1", "a_w1"] and not (b / "latency").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


# --- baking keeps precisions apart -----------------------------------------------------------------------
def _precision_runtimes():
    from oat_edge.runtime import Runtime

    from runtime_support import precision_bundle_path

    b = precision_bundle_path()
    return Runtime(b, backend="onnxruntime", threads=1, bake=True), Runtime(b, backend="onnxruntime", threads=1)


def test_bake_serves_each_precision_from_its_own_path():
    from runtime_support import sample_images

    rt, ref = _precision_runtimes()
    x = sample_images(4, seed=3)
    try:
        want = {}
        for p in ("fp32", "fp16", "int8"):
            ref.set_mode(0.3, 1.0, p)
            want[p] = ref.infer(x)
        rt.set_mode(0.3, 1.0)
        assert rt.wait_baked(0.3, 1.0, timeout=120) and rt.baked_now()
        for p in ("int8", "fp16"):
            assert np.abs(want[p] - want["fp32"]).max() > 1e-3  # the precisions are told apart
            rt.set_mode(0.3, 1.0, p)
            baked = rt.wait_baked(0.3, 1.0, timeout=120, precision=p)  # baked or failed: either way settled
            y, mode = rt.infer_with_mode(x)
            assert mode.precision == p and rt.baked_now() == baked
            np.testing.assert_allclose(y, want[p], rtol=0, atol=1e-4)
    finally:
        rt.close()
        ref.close()


def test_a_failed_int8_bake_does_not_block_the_fp32_mode():
    rt, ref = _precision_runtimes()
    ref.close()
    try:
        rt.set_mode(0.6, 1.0, "int8")
        rt.wait_baked(0.6, 1.0, timeout=120, precision="int8")
        rt.set_mode(0.6, 1.0)
        assert rt.wait_baked(0.6, 1.0, timeout=120) and rt.baked_now()
    finally:
        rt.close()


# --- a signed bundle is built from the bytes that were verified ------------------------------------------
def test_files_swapped_during_signed_loads_are_never_accepted(tmp_path):
    """A thread keeps swapping paths/a_w1.onnx and paths/c_w1.onnx (both validly hashed and
    signed, each under the other's name half the time) while the Runtime loads the bundle with
    trusted_keys 100 times. A load may be refused (hash mismatch); one that is accepted must run
    the model that was verified."""
    import os
    import threading
    import warnings

    from oat_edge.errors import OatEdgeError
    from oat_edge.runtime import Runtime
    from oat_edge.bundle.manifest import sign_bundle
    from oat_edge.bundle.signature import generate_key

    from hardening_support import images

    b = copy_bundle(tmp_path)
    key = generate_key(tmp_path / "key")
    sign_bundle(b, key["private"])
    x = images(4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = Runtime(b, backend="onnxruntime", threads=1, trusted_keys=[key["public"]], mode=(0.33, 1.0))
    want = ref.infer(x)
    ref.close()
    a, c, tmp = b / "paths" / "a_w1.onnx", b / "paths" / "c_w1.onnx", b / "paths" / "swap.tmp"
    stop, swaps = threading.Event(), [0]

    def swapper():
        while not stop.is_set():
            os.rename(a, tmp)
            os.rename(c, a)
            os.rename(tmp, c)
            swaps[0] += 1
            stop.wait(0.003)  # pace: some loads then verify a consistent pair and get accepted

    t = threading.Thread(target=swapper)
    t.start()
    accepted = wrong = refused = 0
    try:
        for _ in range(100):
            try:
                rt = Runtime(b, backend="onnxruntime", threads=1, trusted_keys=[key["public"]], mode=(0.33, 1.0))
            except OatEdgeError:
                refused += 1
                continue
            accepted += 1
            wrong += not np.allclose(rt.infer(x), want, rtol=0, atol=1e-5)
            rt.close()
    finally:
        stop.set()
        t.join()
    print(f"swapped loads: {accepted} accepted, {wrong} of them wrong, {refused} refused, {swaps[0]} swaps")
    assert swaps[0] >= 100 and wrong == 0


# --- frames: bounded, separable resize; sizes checked before allocating ---------------------------------
def _dense_resize_reference(x, out_h, out_w):
    """The module docstring's formula with dense float64 matrices (small sizes only)."""
    def weights(n_in, n_out):
        scale = n_in / n_out
        support = max(scale, 1.0)
        centres = (np.arange(n_out) + 0.5) * scale
        w = np.maximum(0.0, 1.0 - np.abs(np.arange(n_in)[None, :] + 0.5 - centres[:, None]) / support)
        return w / w.sum(axis=1, keepdims=True)

    y = np.tensordot(weights(x.shape[0], out_h), x.astype(np.float64), axes=([1], [0]))
    return np.tensordot(weights(x.shape[1], out_w), y, axes=([1], [1])).transpose(1, 0, 2)


@pytest.mark.parametrize("shape,out", [((48, 64, 3), (32, 43)), ((7, 5, 1), (20, 13)), ((480, 640, 3), (24, 32)),
                                       ((1, 300, 1), (16, 4800 // 300 * 300)), ((9, 9, 3), (9, 4))])
def test_banded_resize_matches_the_documented_formula(shape, out):
    from oat_edge.preprocess import resize

    x = np.random.default_rng(0).random(shape, dtype=np.float32) * 255
    np.testing.assert_allclose(resize(x, *out), _dense_resize_reference(x, *out), rtol=0, atol=2e-3)


@pytest.mark.parametrize("frame_hw,resize_to", [((1, 10000), 256), ((1, 5000), 256), ((10000, 10000), None)])
def test_huge_or_extreme_frames_are_refused_before_allocating(frame_hw, resize_to):
    import tracemalloc

    from oat_edge.errors import InputError
    from oat_edge.preprocess import apply_preprocessing, make_contract

    contract = make_contract(channels=3, image_hw=(224, 224), resize=resize_to)
    frame = np.broadcast_to(np.uint8(7), frame_hw + (3,))  # no memory of its own
    tracemalloc.start()
    try:
        with pytest.raises(InputError):
            apply_preprocessing(frame, contract, (224, 224))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20


def test_a_1x5000_frame_resizes_in_bounded_memory():
    import tracemalloc

    from oat_edge.preprocess import apply_preprocessing, make_contract

    contract = make_contract(channels=1, image_hw=(8, 8), resize=8)
    frame = np.random.default_rng(0).integers(0, 256, (1, 5000, 3)).astype(np.uint8)
    tracemalloc.start()
    try:
        x = apply_preprocessing(frame, contract, (8, 8))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert x.shape == (1, 8, 8) and np.isfinite(x).all() and peak < 64 << 20


@pytest.mark.parametrize("field,value", [("resize", {"size": 65536, "mode": "shorter_side",
                                                     "interpolation": "triangle_antialias"}),
                                         ("crop", {"size": [65536, 8], "mode": "center"})])
def test_schema_bounds_preprocessing_sizes(tmp_path, field, value):
    import json

    from oat_edge.bundle.manifest import load_manifest
    from oat_edge.errors import BundleError

    b = copy_bundle(tmp_path)
    m = json.loads((b / "manifest.json").read_text())
    m["preprocessing"][field] = value
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError):
        load_manifest(b, verify_hashes=False)


# --- own datasets ------------------------------------------------------------------------------------------
def test_one_huge_label_is_refused_without_counting_to_it(tmp_path):
    import tracemalloc

    from oat_edge.errors import ConfigError
    from oat_edge.training.datasets.own import load_own

    x = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 1)).astype(np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 1, 2, 10**8]))
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError, match="class 3 has no images"):
            load_own(f"npz:{tmp_path / 'd.npz'}")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20


def test_16_bit_pngs_are_scaled_not_clipped(tmp_path):
    from PIL import Image

    from oat_edge.training.datasets.own import _decode

    values = np.array([[0, 100, 30000, 65535]], np.uint16)
    Image.fromarray(values).save(tmp_path / "a.png")
    with Image.open(tmp_path / "a.png") as im:
        assert im.mode.startswith("I;16")  # (what Pillow opens a 16-bit grey PNG as)
    got = _decode(tmp_path / "a.png")
    assert got.dtype == np.uint8 and got.shape == (1, 4, 3)
    np.testing.assert_array_equal(got[0, :, 0], np.round(values[0] / 257).astype(np.uint8))


def test_32_bit_images_are_one_config_error(tmp_path):
    from PIL import Image

    from oat_edge.errors import ConfigError
    from oat_edge.training.datasets.own import _decode

    Image.fromarray(np.array([[0, 1 << 20]], np.int32)).save(tmp_path / "a.tif")
    with pytest.raises(ConfigError, match="no known value range"):
        _decode(tmp_path / "a.tif")


# --- manifest, keys and modes ------------------------------------------------------------------------------
def test_duplicate_manifest_keys_are_refused(tmp_path):
    from oat_edge.bundle.manifest import load_manifest
    from oat_edge.errors import BundleError

    b = copy_bundle(tmp_path)
    text = (b / "manifest.json").read_text()
    (b / "manifest.json").write_text(text.replace('"schema_version": 1,', '"schema_version": 1, "schema_version": 1,', 1))
    with pytest.raises(BundleError, match="appears twice"):
        load_manifest(b, verify_hashes=False)


@pytest.mark.parametrize("keys", [[], (), 123])
def test_trusted_keys_that_name_no_key_are_refused(keys):
    from oat_edge.errors import ConfigError
    from oat_edge.runtime import Runtime

    with pytest.raises(ConfigError, match="trusted_keys"):
        Runtime(bundle(), backend="onnxruntime", threads=1, trusted_keys=keys)


@pytest.mark.parametrize("lam,width", [("0.5", 1.0), (True, 1.0), (0.5, "1"), (0.5, True), (b"0.5", 1.0)])
def test_set_mode_takes_numbers_only(lam, width):
    from oat_edge.errors import ModeError
    from oat_edge.runtime import Runtime

    rt = Runtime(bundle(), backend="onnxruntime", threads=1)
    try:
        with pytest.raises(ModeError):
            rt.set_mode(lam, width)
    finally:
        rt.close()


def test_key_files_that_are_not_one_small_regular_file_are_refused(tmp_path):
    import os

    from oat_edge.errors import ConfigError
    from oat_edge.bundle.signature import generate_key, load_private_key, load_public_key

    one, two = generate_key(tmp_path / "one"), generate_key(tmp_path / "two")
    both = tmp_path / "both.pub"
    both.write_bytes(open(one["public"], "rb").read() + open(two["public"], "rb").read())
    with pytest.raises(ConfigError, match="more than one PEM block"):
        load_public_key(both)
    with pytest.raises(ConfigError, match="more than one PEM block"):
        load_public_key(both.read_bytes())
    with pytest.raises(ConfigError, match="too large|not a regular file"):
        load_public_key("/dev/zero")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # nobody writes: a reader would wait forever
    with pytest.raises(ConfigError, match="not a regular file"):
        load_private_key(fifo)
    load_public_key(one["public"])  # one key: fine


@pytest.mark.parametrize("command,target", [("run", "manifest.json"), ("verify", "manifest.json"),
                                            ("bench", "paths/a_w1.onnx")])
def test_reports_are_never_written_inside_the_input_bundle(tmp_path, capsys, command, target):
    b = copy_bundle(tmp_path)
    before = _tree(b)
    argv = [command, str(b), "--json", str(b / target)]
    if command == "run":
        argv += ["--images", "random"]
    assert main(argv) == 2
    assert "inside the bundle" in one_error_line(capsys, command)
    assert _tree(b) == before


@pytest.mark.parametrize("field,value", [("mean", [0.5, 0.5, 0.5]), ("std", [0.2, 0.2]), ("source_range", [1.0, 0.0])])
def test_preprocessing_fields_are_cross_checked(tmp_path, field, value):
    import json

    from oat_edge.bundle.manifest import load_manifest
    from oat_edge.errors import BundleError

    b = copy_bundle(tmp_path)
    m = json.loads((b / "manifest.json").read_text())
    assert m["model"]["input_shape"][0] == 1
    m["preprocessing"][field] = value
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=field):
        load_manifest(b, verify_hashes=False)


# --- sign refuses what the runtime refuses ----------------------------------------------------------------
def test_sign_refuses_a_bundle_the_runtime_refuses(tmp_path, capsys):
    from oat_edge.errors import BundleError
    from oat_edge.runtime import Runtime
    from oat_edge.bundle.names import SIGNATURE_FILE
    from oat_edge.bundle.signature import generate_key

    from hardening_support import load_npz_plain, rehash, write_npz_plain

    b = copy_bundle(tmp_path)
    arrays = load_npz_plain(b / "film.npz")
    arrays["table_w1"][0, 0] = np.nan
    write_npz_plain(b / "film.npz", arrays)
    rehash(b)
    with pytest.raises(BundleError, match="NaN"):
        Runtime(b, backend="onnxruntime", threads=1)
    key = generate_key(tmp_path / "key")
    assert main(["sign", str(b), "--private-key", key["private"]]) == 2
    assert "NaN" in one_error_line(capsys, "sign") and not (b / SIGNATURE_FILE).exists()


# --- off-grid FiLM vectors are finite ----------------------------------------------------------------------
def _huge_generator_bundle(tmp_path):
    from hardening_support import load_npz_plain, rehash, write_npz_plain

    b = copy_bundle(tmp_path)
    arrays = load_npz_plain(b / "film.npz")
    for name in ("fc1_weight_w1_s0", "fc2_weight_w1_s0"):  # finite float32, but their product is not
        arrays[name] = (arrays[name] * np.float32(1e30)).astype(np.float32)
    assert all(np.isfinite(a).all() for a in arrays.values() if a.dtype.kind == "f")
    write_npz_plain(b / "film.npz", arrays)
    rehash(b)
    return b


@pytest.mark.parametrize("impl", impl_params())
def test_generators_that_overflow_off_the_grid_are_refused_by_both_twins(tmp_path, impl):
    from oat_edge.errors import BundleError
    from oat_edge.runtime import Runtime

    with pytest.raises(BundleError, match="overflows float32"):
        Runtime(_huge_generator_bundle(tmp_path), backend="onnxruntime", threads=1, impl=impl)


def test_run_off_the_grid_with_overflowing_generators_is_one_error(tmp_path, capsys):
    b = _huge_generator_bundle(tmp_path)
    assert main(["run", str(b), "--lam", "0.33", "--width", "1", "--images", "random"]) == 2
    assert "overflows float32" in one_error_line(capsys, "run")


# --- one error line, never a traceback ---------------------------------------------------------------------
@pytest.mark.parametrize("argv", [["inspect", "BUNDLE", "--json", "/proc/x.json"], ["keygen", "--out", "/proc/nope/key"],
                                  ["reproduce", "--out", "/proc/nope", "--suite", "quick", "--no-progress"]])
def test_unwritable_outputs_are_one_error_line(capsys, argv):
    argv = [str(bundle()) if a == "BUNDLE" else a for a in argv]
    assert main(argv) == 2
    assert "/proc/" in one_error_line(capsys, argv[0])


def test_training_on_tiny_images_is_one_config_error(tmp_path):
    from oat_edge.errors import ConfigError
    from oat_edge.training.datasets.own import load_own

    x = np.random.default_rng(0).integers(0, 256, (40, 1, 1, 1)).astype(np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(40) % 2)
    with pytest.raises(ConfigError, match="too small"):
        load_own(f"npz:{tmp_path / 'd.npz'}")


def test_an_image_over_pillows_limit_is_one_config_error(tmp_path, monkeypatch):
    from PIL import Image

    from oat_edge.errors import ConfigError
    from oat_edge.training.datasets.own import _decode

    Image.new("L", (64, 64)).save(tmp_path / "a.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses above twice its limit
    with pytest.raises(ConfigError, match="more pixels than Pillow"):
        _decode(tmp_path / "a.png")


def test_runtime_api_misuse_is_one_oat_edge_error():
    import torch

    from oat_edge.errors import ConfigError, InputError
    from oat_edge.runtime import Runtime

    with pytest.raises(ConfigError, match="ring_slots"):
        Runtime(bundle(), backend="onnxruntime", threads=1, ring_slots=0)
    rt = Runtime(bundle(), backend="onnxruntime", threads=1)
    with pytest.raises(InputError, match="no frames"):
        rt.infer_frames(np.zeros((0, 8, 8, 3), np.uint8))
    with pytest.raises(InputError, match="meta tensor"):
        rt.infer(torch.empty(1, 1, 8, 8, device="meta"))
    rt.close()
    with pytest.raises(ConfigError, match="closed"):
        rt.infer(np.zeros((1, 1, 8, 8), np.float32))


def test_infer_racing_with_close_gets_the_closed_error():
    import threading

    from oat_edge.errors import ConfigError
    from oat_edge.runtime import Runtime

    rt = Runtime(bundle(), backend="onnxruntime", threads=1)
    x = np.zeros((1, 1, 8, 8), np.float32)
    errors, started = [], threading.Event()

    def loop():
        try:
            while True:
                rt.infer(x)
                started.set()
        except Exception as e:  # the loop ends only by an error: the runtime was closed
            errors.append(e)
            started.set()

    t = threading.Thread(target=loop)
    t.start()
    started.wait()
    rt.close()
    t.join()
    assert len(errors) == 1 and isinstance(errors[0], ConfigError) and "closed" in str(errors[0]), errors


# --- messages ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("content", ["object_array", "raw_pickle"])
def test_npy_and_npz_errors_never_advise_loading_pickles(tmp_path, capsys, content):
    import pickle

    from oat_edge.errors import ConfigError
    from oat_edge.training.datasets.own import load_own

    npy, npz = tmp_path / "x.npy", tmp_path / "d.npz"
    if content == "object_array":
        np.save(npy, np.array([{"a": 1}], dtype=object), allow_pickle=True)
        np.savez(npz, x=np.array([{"a": 1}], dtype=object), y=np.zeros(1))
    else:
        npy.write_bytes(pickle.dumps([1, 2, 3]))
        npz.write_bytes(pickle.dumps([1, 2, 3]))
    assert main(["run", str(bundle()), "--images", str(npy)]) == 2
    line = one_error_line(capsys, "run")
    assert "pickled" in line and "allow_pickle" not in line and "unsafe" not in line
    with pytest.raises(ConfigError) as info:
        load_own(f"npz:{npz}")
    assert "allow_pickle" not in str(info.value) and "unsafe" not in str(info.value)


def test_divergence_never_calls_an_unrelated_out_file_a_good_checkpoint(tmp_path):
    from oat_edge.training.config import TrainConfig
    from oat_edge.training.trainers import Trainer

    out = tmp_path / "notes.pt"
    out.write_text("not a checkpoint of this run")
    trainer = Trainer(TrainConfig(dataset="digits", method="oat", arch="resnet_tiny", epochs=1, batch_size=32,
                                  max_train_images=64, threads=1, out=str(out), progress=False))
    try:
        message = trainer.state.diverged("the loss is nan at epoch 1, step 1")
    finally:
        trainer.ctx.close()
    assert "last good checkpoint" not in message and "no checkpoint was written" in message
    assert out.read_text() == "not a checkpoint of this run"


# --- tuned thread counts are bounded -----------------------------------------------------------------------
def test_tuned_thread_counts_never_exceed_the_cpus(tmp_path):
    import json

    from oat_edge.host import default_threads
    from oat_edge.runtime import Runtime
    from oat_edge.runtime.device import device_key

    from hardening_support import read_manifest

    b = copy_bundle(tmp_path)
    (b / "latency").mkdir(exist_ok=True)
    key = device_key("onnxruntime", default_threads(), "cpu")
    paths = [e["id"] for e in read_manifest(b)["paths"]]
    (b / "latency" / f"{key}.json").write_text(json.dumps({"device_key": key, "records": [],
                                                           "path_threads": {p: {"1": 1024} for p in paths}}))
    rt = Runtime(b, backend="onnxruntime", threads="tuned")
    try:
        assert rt.backend.path_threads and set(rt.backend.path_threads.values()) == {default_threads()}
    finally:
        rt.close()


def test_with_trusted_keys_only_signed_latency_profiles_are_used(tmp_path):
    import base64
    import json
    import warnings

    from oat_edge.host import default_threads
    from oat_edge.runtime import Runtime
    from oat_edge.runtime.device import device_key
    from oat_edge.bundle.manifest import sign_bundle
    from oat_edge.bundle.names import SIGNATURE_FILE
    from oat_edge.bundle.signature import _DOMAIN, generate_key, load_private_key

    from hardening_support import read_manifest

    b = copy_bundle(tmp_path)
    (b / "latency").mkdir(exist_ok=True)
    profile = b / "latency" / f"{device_key('onnxruntime', default_threads(), 'cpu')}.json"
    paths = [e["id"] for e in read_manifest(b)["paths"]]

    def write_profile(threads):
        profile.write_text(json.dumps({"device_key": profile.stem, "records": [],
                                       "path_threads": {p: {"1": threads} for p in paths}}))

    def tuned(**kw):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rt = Runtime(b, backend="onnxruntime", threads="tuned", **kw)
        rt.close()
        return "no tuned thread counts" not in (rt.backend_reason or "")  # whether a profile was used

    write_profile(1)
    key = generate_key(tmp_path / "key")
    sign_bundle(b, key["private"])
    trusted = {"trusted_keys": [key["public"]]}
    assert tuned(**trusted)  # signed: used
    write_profile(2)  # changed after signing: a robot with trusted keys ignores it
    assert not tuned(**trusted) and tuned()
    profile.unlink()
    assert not tuned(**trusted)
    # A signature over manifest.json alone (format 1) still verifies, and covers no profile.
    write_profile(1)
    sig = json.loads((b / SIGNATURE_FILE).read_text())
    private = load_private_key(key["private"])
    sig.update(format_version=1, signature=base64.b64encode(
        private.sign(_DOMAIN + (b / "manifest.json").read_bytes())).decode("ascii"))
    del sig["latency"]
    (b / SIGNATURE_FILE).write_text(json.dumps(sig))
    assert not tuned(**trusted)


def test_an_older_validly_signed_bundle_is_refused_with_min_signed_at(tmp_path, capsys):
    """Rollback protection: the signature covers the signing time, so a runtime told the oldest
    signing time it accepts refuses an older bundle that is otherwise perfectly signed, also
    when the time in manifest.sig is edited (the signature then fails)."""
    import json

    from oat_edge.cli import main
    from oat_edge.errors import BundleError, ConfigError
    from oat_edge.runtime import Runtime
    from oat_edge.bundle.names import SIGNATURE_FILE
    from oat_edge.bundle.signature import generate_key, load_private_key, sign_manifest
    from oat_edge.fileio import atomic_write_json
    from oat_edge.bundle.safe_files import read_manifest_bytes

    key = generate_key(tmp_path / "key")
    bundles = {}
    for name, when in (("old", "2026-01-01T00:00:00"), ("new", "2026-06-01T00:00:00+00:00")):
        b = copy_bundle(tmp_path / name)
        sig = sign_manifest(read_manifest_bytes(b), load_private_key(key["private"]), {}, signed_at=when)
        atomic_write_json(b / SIGNATURE_FILE, sig)
        bundles[name] = b
    floor = "2026-03-01"
    Runtime(bundles["new"], backend="onnxruntime", trusted_keys=[key["public"]], min_signed_at=floor).close()
    with pytest.raises(BundleError, match="signed at 2026-01-01.*refusing a rollback"):
        Runtime(bundles["old"], backend="onnxruntime", trusted_keys=[key["public"]], min_signed_at=floor)
    # Moving the signed time forward in manifest.sig breaks the signature.
    sig = json.loads((bundles["old"] / SIGNATURE_FILE).read_text())
    sig["signed_at"] += 365 * 86400
    (bundles["old"] / SIGNATURE_FILE).write_text(json.dumps(sig))
    with pytest.raises(BundleError, match="does not match"):
        Runtime(bundles["old"], backend="onnxruntime", trusted_keys=[key["public"]], min_signed_at=floor)
    # Without trusted keys no signing time is proven: asking for one is a configuration error.
    with pytest.raises(ConfigError, match="needs trusted_keys"):
        Runtime(bundles["new"], backend="onnxruntime", min_signed_at=floor)
    with pytest.raises(ConfigError, match="ISO 8601"):
        Runtime(bundles["new"], backend="onnxruntime", trusted_keys=[key["public"]], min_signed_at="last tuesday")
    # The same from the command line: one error line, exit 2.
    assert main(["verify", str(bundles["new"]), "--key", str(key["public"]), "--min-signed-at", floor]) == 0
    capsys.readouterr()
    assert main(["verify", str(bundles["new"]), "--key", str(key["public"]), "--min-signed-at", "2027-01-01"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refusing a rollback" in err[0]
