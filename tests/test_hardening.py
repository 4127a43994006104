"""Bundle hardening: each test is one numbered case (tampered or broken bundles, signatures,
the one validation path shared by Runtime and verify). Every bundle is a
private copy of one export; "rehash" is what a forger does after editing files."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest

from hardening_support import (copy_bundle, images, load_npz_plain, read_manifest, rehash, write_manifest,
                               write_npz_plain)
from oat_edge.errors import BundleError, InputError, OatEdgeError

pytestmark = pytest.mark.filterwarnings("ignore::oat_edge.bundle.signature.UnsignedBundleWarning")


def runtime(b, **kw):
    from oat_edge.runtime import Runtime

    return Runtime(b, backend="onnxruntime", threads=1, **kw)


def verify(b, **kw):
    from oat_edge.runtime.verify import verify_bundle

    return verify_bundle(b, threads=1, **kw)


def refused_everywhere(b, needle=None, inspect=True, **kw):
    """Runtime, verify and inspect's reader (load_manifest) all refuse the bundle with one
    BundleError line. ``inspect=False`` for damage only loading the graphs reveals (a garbage or
    wrong-shaped ONNX file with a matching hash): inspect does not load graphs."""
    from oat_edge.bundle.manifest import load_manifest

    loads = [lambda: runtime(b, **kw), lambda: verify(b, **kw)]
    if inspect:
        loads.append(lambda: load_manifest(b, trusted_keys=kw.get("trusted_keys")))
    for load in loads:
        with pytest.raises(BundleError) as info:
            load()
        text = str(info.value)
        assert "\n" not in text
        if needle:
            assert needle in text, text
    return info.value


def keypair(tmp_path, name="key"):
    from oat_edge.bundle.signature import generate_key

    return generate_key(tmp_path / name)


def sign(b, key):
    from oat_edge.bundle.manifest import sign_bundle

    return sign_bundle(b, key["private"])


# --- case 1: a manifest field that no hash covers ----------------------------------------------------
def test_case1_edited_negative_slope_is_refused_by_runtime_and_verify(tmp_path):
    b = copy_bundle(tmp_path)
    m = read_manifest(b)
    m["film"]["negative_slope"] = 0.5  # the FiLM generators' slope: changes every off-grid λ
    write_manifest(b, m)
    refused_everywhere(b, "negative_slope", inspect=False)  # inspect does not open film.npz


def test_case1_any_edit_of_a_signed_manifest_is_refused(tmp_path):
    b = copy_bundle(tmp_path)
    key = keypair(tmp_path)
    sign(b, key)
    runtime(b, trusted_keys=[key["public"]]).close()  # signed and intact: accepted
    m = read_manifest(b)
    m["notes"] = ["harmless-looking edit"]
    write_manifest(b, m)
    refused_everywhere(b, "changed after signing", trusted_keys=[key["public"]])


# --- case 2: recomputed hashes; only signatures catch them -------------------------------------------
def _trojan(b):
    """paths/a_w1.onnx made to answer 7 for everything, parity.npz recomputed, hashes rewritten."""
    import onnx
    from onnx import numpy_helper

    f = b / "paths" / "a_w1.onnx"
    model = onnx.load(str(f))
    gemm = [n for n in model.graph.node if n.op_type == "Gemm"][-1]
    for init in model.graph.initializer:
        if init.name == gemm.input[2]:
            bias = numpy_helper.to_array(init).copy()
            bias[7] += 1000.0
            init.CopyFrom(numpy_helper.from_array(bias, init.name))
    onnx.save(model, str(f))
    # Recompute the parity logits of the trojan too, so that a parity rerun passes.
    from oat_edge.runtime import Runtime

    ref = load_npz_plain(b / "parity.npz")
    rehash(b)
    sig = b / "manifest.sig"
    saved = sig.read_bytes() if sig.exists() else None
    if saved is not None:
        sig.unlink()  # the forger's own tooling runs the bundle unsigned
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rt = Runtime(b, backend="onnxruntime", threads=1)
    for item in read_manifest(b)["parity_reference"]["entries"]:
        if item["id"] == "a_w1":
            ref[item["key"]] = rt.backend.infer_path("a_w1", ref["images"], rt.film_vector(item["lam"], 1.0))
    rt.close()
    write_npz_plain(b / "parity.npz", ref)
    rehash(b)
    if saved is not None:
        sig.write_bytes(saved)  # the old signature stays: it is all the forger cannot recompute


def test_case2_forged_bundle_with_recomputed_hashes_is_refused_with_trusted_keys(tmp_path, capsys):
    from oat_edge.cli import main

    b = copy_bundle(tmp_path)
    key = keypair(tmp_path)
    sign(b, key)
    _trojan(b)
    # Hashes and parity agree with the trojan; the signature over the manifest does not.
    refused_everywhere(b, "changed after signing", trusted_keys=[key["public"]])
    refused_everywhere(b, "changed after signing")  # a signature that fails is refused even without keys
    assert main(["verify", str(b), "--key", key["public"], "--threads", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "changed after signing" in err[0]
    # The forger drops the signature: without trusted keys only hashes are left, and they pass
    # (the documented limit: hashes catch corruption, not tampering) ...
    os.unlink(b / "manifest.sig")
    rt = runtime(b)
    rt.set_mode(0.5, 1.0)
    assert (rt.infer(images(8)).argmax(1) == 7).all()
    rt.close()
    verify(b)
    # ... while a runtime with trusted keys refuses the unsigned bundle.
    refused_everywhere(b, "not signed", trusted_keys=[key["public"]])


def test_case2_trusted_keys_always_check_the_hashes(tmp_path):
    """verify=False skips hashing for speed, but not under a signature: it would vouch for nothing."""
    b = copy_bundle(tmp_path)
    key = keypair(tmp_path)
    sign(b, key)
    import onnx
    from onnx import numpy_helper

    f = b / "paths" / "a_w1.onnx"
    model = onnx.load(str(f))
    gemm = [n for n in model.graph.node if n.op_type == "Gemm"][-1]
    init = next(i for i in model.graph.initializer if i.name == gemm.input[2])  # the classifier's bias
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + 1, init.name))
    onnx.save(model, str(f))  # a valid graph with other weights; manifest (and signature) untouched
    runtime(b, verify=False).close()  # documented: no keys, no hashing asked for
    with pytest.raises(BundleError, match="does not match its sha256"):
        runtime(b, verify=False, trusted_keys=[key["public"]])


def test_case2_signed_by_another_key_is_refused(tmp_path):
    b = copy_bundle(tmp_path)
    mine, theirs = keypair(tmp_path, "mine"), keypair(tmp_path, "theirs")
    sign(b, theirs)
    refused_everywhere(b, "not trusted", trusted_keys=[mine["public"]])


def test_case2_external_data_not_named_in_the_manifest_is_refused(tmp_path):
    import onnx

    b = copy_bundle(tmp_path)
    f = b / "paths" / "a_w1.onnx"
    model = onnx.load(str(f))
    onnx.save_model(model, str(f), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="a_w1.data", size_threshold=1024)
    assert (b / "paths" / "a_w1.data").stat().st_size > 0
    rehash(b)
    refused_everywhere(b, "external data 'a_w1.data'")
    # Named and hashed in the manifest, it loads; zeroing it afterwards is then noticed.
    m = read_manifest(b)
    from hardening_support import sha

    [p for p in m["paths"] if p["id"] == "a_w1"][0]["external_data"] = [
        {"file": "paths/a_w1.data", "sha256": sha(b / "paths" / "a_w1.data")}]
    write_manifest(b, m)
    runtime(b).close()
    data = b / "paths" / "a_w1.data"
    data.write_bytes(b"\0" * data.stat().st_size)
    refused_everywhere(b, "does not match its sha256")


# --- case 3: symlinks --------------------------------------------------------------------------------
@pytest.mark.parametrize("what", ["onnx", "paths-folder", "manifest", "film"])
def test_case3_symlinks_out_of_the_bundle_are_refused(tmp_path, what):
    import shutil

    from oat_edge.bundle.manifest import load_manifest

    b = copy_bundle(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    target = {"onnx": b / "paths" / "a_w1.onnx", "paths-folder": b / "paths", "manifest": b / "manifest.json",
              "film": b / "film.npz"}[what]
    moved = outside / target.name
    shutil.move(str(target), str(moved))
    os.symlink(moved, target)  # same bytes, so every hash still matches
    refused_everywhere(b, "symlink")
    with pytest.raises(BundleError, match="symlink"):
        load_manifest(b)  # what `oat-edge inspect` reads


# --- case 4: bad files give one BundleError, never another exception ----------------------------------
def test_case4_garbage_and_wrong_onnx_give_bundle_errors(tmp_path):
    b = copy_bundle(tmp_path)
    (b / "paths" / "a_w1.onnx").write_bytes(b"\x08\x07garbage" * 100)
    rehash(b)
    refused_everywhere(b, inspect=False)
    # A valid ONNX of another width in its place (same input names): refused at load, not at infer.
    b2 = copy_bundle(tmp_path, "b2")
    (b2 / "paths" / "a_w1.onnx").write_bytes((b2 / "paths" / "a_w0.5.onnx").read_bytes())
    rehash(b2)
    refused_everywhere(b2, "shape", inspect=False)


MANIFEST_TYPE_ERRORS = {
    "paths-dict": lambda m: m.update(paths={"a": 1}),
    "film-string": lambda m: m.update(film="film.npz"),
    "io-null": lambda m: m.update(io=None),
    "batch-string": lambda m: m["batch"].update(min="1"),
    "widths-string": lambda m: m["model"].update(widths="0.5"),
    "film-size-float": lambda m: m["paths"][0].update(film_size=1.5),
}


@pytest.mark.parametrize("mutation", sorted(MANIFEST_TYPE_ERRORS))
def test_case4_wrong_field_types_give_one_bundle_error(tmp_path, mutation):
    b = copy_bundle(tmp_path)
    m = read_manifest(b)
    MANIFEST_TYPE_ERRORS[mutation](m)
    write_manifest(b, m)
    refused_everywhere(b)


def test_case4_deep_nesting_gives_a_bundle_error(tmp_path):
    b = copy_bundle(tmp_path)
    text = (b / "manifest.json").read_text()
    deep = "[" * 100_000 + "]" * 100_000
    (b / "manifest.json").write_text(text.replace('"notes": []', f'"notes": {deep}'))
    refused_everywhere(b, "nests deeper")


def test_case4_pickled_film_tables_give_a_bundle_error(tmp_path):
    import zipfile

    b = copy_bundle(tmp_path)
    arrays = load_npz_plain(b / "film.npz")
    with zipfile.ZipFile(b / "film.npz", "w") as zf:
        for k, v in arrays.items():
            with zf.open(f"{k}.npy", "w") as f:
                if k == "lambda_grid":
                    np.lib.format.write_array(f, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
                else:
                    np.lib.format.write_array(f, v)
    rehash(b)
    refused_everywhere(b, "pickle", inspect=False)


def test_case4_huge_npy_header_gives_a_bundle_error(tmp_path):
    import zipfile

    b = copy_bundle(tmp_path)
    arrays = load_npz_plain(b / "film.npz")
    with zipfile.ZipFile(b / "film.npz", "w") as zf:
        for k, v in arrays.items():
            with zf.open(f"{k}.npy", "w") as f:
                if k == "table_w1":  # a header announcing 8 TB of float64
                    np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False,
                                                             "shape": (10**12,)})
                    f.write(b"\0" * 64)
                else:
                    np.lib.format.write_array(f, v)
    rehash(b)
    refused_everywhere(b, "table_w1", inspect=False)


def test_case4_first_infer_after_a_wrong_path_swap_is_a_bundle_error(tmp_path):
    """The file changed under a loaded Runtime: whatever onnxruntime raises becomes one BundleError."""
    from oat_edge.runtime.backends.onnxruntime.runner import OnnxRuntimeRunner

    b = copy_bundle(tmp_path)
    rt = runtime(b)
    rt.set_mode(0.5, 1.0)

    class Boom:
        def run(self, *a, **k):
            from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

            raise InvalidArgument("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions")

    assert isinstance(rt.backend, OnnxRuntimeRunner)
    rt.backend._sessions = [Boom()] * len(rt.backend._sessions)
    with pytest.raises(BundleError, match="failed in onnxruntime"):
        rt.infer(images(2))


# --- case 5: verify refuses exactly what the Runtime refuses -------------------------------------------
def _film(fn):
    def mutate(b):
        arrays = load_npz_plain(b / "film.npz")
        fn(arrays)
        write_npz_plain(b / "film.npz", arrays)
    return mutate


def _manifest(fn):
    def mutate(b):
        m = read_manifest(b)
        fn(m)
        write_manifest(b, m)
    return mutate


def _latency(b):
    from oat_edge.bundle.latency import profile_path
    from oat_edge.runtime.device import device_key

    path = profile_path(b, device_key("onnxruntime", 1, "cpu"))  # the profile this Runtime reads
    path.parent.mkdir()
    path.write_text(json.dumps({"records": [{"lam": 0}]}))


RUNTIME_REFUSES = {
    "film-float64": _film(lambda a: a.update(table_w1=a["table_w1"].astype(np.float64))),
    "film-nan": _film(lambda a: a["table_w1"].__setitem__((0, 0), np.nan)),
    "film-wrong-size": _film(lambda a: a.update(table_w1=a["table_w1"][:, :-2])),
    "input-shape": _manifest(lambda m: m["model"].update(input_shape=[1, 9, 9])),
    "batch-min-gt-max": _manifest(lambda m: m["batch"].update(min=32, opt=32)),
    "empty-widths": _manifest(lambda m: m["model"].update(widths=[])),
    "bn-x": _manifest(lambda m: m["paths"][0].update(bn="x")),
    "baked-lam-7": _manifest(lambda m: m["baked"][0].update(lam=7)),
    "latency-profile": _latency,
}


@pytest.mark.parametrize("mutation", sorted(RUNTIME_REFUSES))
def test_case5_verify_refuses_what_the_runtime_refuses(tmp_path, mutation):
    b = copy_bundle(tmp_path)
    RUNTIME_REFUSES[mutation](b)
    rehash(b)
    with pytest.raises(BundleError):
        runtime(b)
    with pytest.raises(BundleError):
        verify(b)


def test_case5_verify_runs_through_the_runtime(tmp_path):
    """A bundle that passes verify: every parity entry ran, mode entries through set_mode + infer."""
    b = copy_bundle(tmp_path)
    report = verify(b)
    assert report["checks"] and all(c["ok"] for c in report["checks"])
    assert {c["via"] for c in report["checks"]} == {"mode", "path"} or {c["via"] for c in report["checks"]} == {"mode"}
    assert any(c["via"] == "mode" for c in report["checks"])


# --- case 10: λ = 1e-12 with a baked λ = 0 --------------------------------------------------------------
def test_case10_tiny_lambda_runs_bn_a_even_when_lambda_zero_is_baked(tmp_path):
    from oat_edge.bundle.modes import select_entry

    b = copy_bundle(tmp_path)
    assert any(e["lam"] == 0.0 for e in read_manifest(b)["baked"])
    rt = runtime(b)
    x = images(4)
    rt.set_mode(1e-12, 1.0)
    assert rt.path_for(1e-12, 1.0) == "a_w1"
    plain = rt.backend.infer_path("a_w1", x, rt.film_vector(1e-12, 1.0))
    np.testing.assert_array_equal(rt.infer(x), plain)
    rt.set_mode(0.0, 1.0)
    assert rt.path_for(0.0, 1.0) == "lam0_w1"
    assert np.abs(rt.infer(x) - plain).max() > 1e-3  # BN_c and BN_a really differ here
    assert select_entry(read_manifest(b), 1e-12, 1.0)["id"] == "a_w1"
    rt.close()


# --- case 12: messages ------------------------------------------------------------------------------------
def test_case12_schema_version_as_a_string_is_named_as_such(tmp_path):
    b = copy_bundle(tmp_path)
    m = read_manifest(b)
    m["schema_version"] = "1"
    write_manifest(b, m)
    err = refused_everywhere(b)
    assert "'1', a string" in str(err) and "reads the integer 1" in str(err)


def test_case12_values_just_above_one_are_not_called_pixels(tmp_path):
    b = copy_bundle(tmp_path)
    rt = runtime(b)
    x = images(2)
    x[0, 0, 0, 0] = 1.0000001
    with pytest.raises(InputError) as info:
        rt.infer(x)
    assert "255" not in str(info.value) and "clip" in str(info.value)
    x[0, 0, 0, 0] = 200.0
    with pytest.raises(InputError, match="divide by 255"):
        rt.infer(x)
    rt.close()


# --- deliverable: signed bundles ---------------------------------------------------------------------------
def test_keygen_sign_verify_inspect_from_the_cli(tmp_path, capsys):
    from oat_edge.cli import main

    b = copy_bundle(tmp_path)
    key = tmp_path / "robot"
    assert main(["keygen", "--out", str(key)]) == 0
    assert oct((key).stat().st_mode & 0o777) == "0o600"
    assert main(["sign", str(b), "--private-key", str(key)]) == 0
    out = capsys.readouterr().out
    key_id = out.split("by key ")[1].split()[0]
    assert main(["verify", str(b), "--key", f"{key}.pub", "--threads", "1"]) == 0
    assert f"signed by key {key_id} (trusted)" in capsys.readouterr().out
    assert main(["inspect", str(b)]) == 0
    assert f"signed by: Ed25519 key {key_id}" in capsys.readouterr().out
    rt = runtime(b, trusted_keys=[f"{key}.pub"])
    rt.set_mode(0.3, 0.5)
    rt.infer(images(2))
    rt.close()


def test_unsigned_bundle_is_accepted_only_without_keys_with_one_warning_line(tmp_path, capsys):
    from oat_edge.cli import main
    from oat_edge.bundle.signature import UnsignedBundleWarning

    b = copy_bundle(tmp_path)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always", UnsignedBundleWarning)
        runtime(b).close()
    assert len(record) == 1 and "\n" not in str(record[0].message)
    key = keypair(tmp_path)
    refused_everywhere(b, "not signed", trusted_keys=[key["public"]])
    with warnings.catch_warnings():
        warnings.simplefilter("always", UnsignedBundleWarning)
        assert main(["run", str(b), "--images", "random", "--count", "2", "--threads", "1", "--lam", "0.3", "--width", "1"]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("oat-edge run: warning:") and "unsigned" in err[0]


def test_bad_key_files_give_one_error(tmp_path):
    b = copy_bundle(tmp_path)
    bad = tmp_path / "bad.pub"
    bad.write_text("not a key")
    with pytest.raises(OatEdgeError, match="not a PEM public key"):
        runtime(b, trusted_keys=[bad])
