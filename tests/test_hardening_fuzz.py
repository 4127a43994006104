"""Fuzzing the readers of manifest.json and film.npz with Hypothesis. Random mutations
of a real bundle's files go through the same readers the Runtime and verify use; the only
exception allowed out is an OatEdgeError (in practice BundleError). The counts of mutations run
are printed (pytest -s) and asserted, so a run that silently tests nothing fails.

OATEDGE_FUZZ_EXAMPLES scales the number of examples (default 1500 manifest mutations, 1500
film.npz mutations, 1500 FiLM site offset/size mutations judged by both the C++ and the Python
FiLM computer, 40 through a whole Runtime). Out-of-bounds writes of the C++ computer are caught
by tests/test_film_twins.py, which runs it under AddressSanitizer."""

from __future__ import annotations

import json
import os
import shutil
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hardening_support import bundle, load_npz_plain
from oat_edge.errors import OatEdgeError

N = int(os.environ.get("OATEDGE_FUZZ_EXAMPLES", "1500"))
COUNTS = {"manifest": 0, "film": 0, "sites": 0, "runtime": 0, "refused": 0}
FUZZ = settings(max_examples=N, deadline=None, database=None, derandomize=True,
                suppress_health_check=list(HealthCheck))

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                         st.text(max_size=8), st.sampled_from(["c", "a", "1", "", "film.npz", "../x", "/etc/passwd"]))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                                 st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                           max_leaves=8)


def _leaves(obj, path=()):
    """Every (path, value) of a JSON document, containers included."""
    yield path, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _leaves(v, path + (i,))


def _set(doc, path, value):
    if not path:
        return value
    parent = doc
    for p in path[:-1]:
        parent = parent[p]
    parent[path[-1]] = value
    return doc


def _delete(doc, path):
    if not path:
        return doc
    parent = doc
    for p in path[:-1]:
        parent = parent[p]
    del parent[path[-1]]
    return doc


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz") / "bundle"
    shutil.copytree(bundle(), d)
    original = {name: (d / name).read_bytes() for name in ("manifest.json", "film.npz")}
    yield d, original
    print(f"\nfuzz: {COUNTS['manifest']} manifest mutations, {COUNTS['film']} film.npz mutations, "
          f"{COUNTS['sites']} FiLM site offset/size mutations (both twins), {COUNTS['runtime']} through a whole Runtime; {COUNTS['refused']} refused with an OatEdgeError, "
          "no other exception")


def _mutate_manifest(data, manifest):
    doc = json.loads(json.dumps(manifest))
    leaves = list(_leaves(doc))
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        leaves = list(_leaves(doc))
        path, _value = leaves[data.draw(st.integers(0, len(leaves) - 1), label="where")]
        action = data.draw(st.sampled_from(["replace", "delete", "number", "nest"]), label="action")
        if action == "replace":
            doc = _set(doc, path, data.draw(json_values, label="value"))
        elif action == "delete" and path:
            doc = _delete(doc, path)
        elif action == "number":
            doc = _set(doc, path, data.draw(st.sampled_from([0, -1, 1e300, 7, 2**63, 0.5, 1e-12, True]), label="num"))
        else:
            doc = _set(doc, path, [[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]])
    return doc


def _check(fn):
    try:
        fn()
    except OatEdgeError as e:
        assert "\n" not in str(e)
        COUNTS["refused"] += 1


@FUZZ
@given(data=st.data())
def test_fuzz_manifest_reader_raises_only_bundle_errors(work, data):
    from oat_edge.bundle.manifest import load_manifest

    d, original = work
    manifest = json.loads(original["manifest.json"])
    if data.draw(st.booleans(), label="bytes"):
        raw = bytearray(original["manifest.json"])
        for _ in range(data.draw(st.integers(1, 4), label="flips")):
            i = data.draw(st.integers(0, len(raw) - 1), label="at")
            raw[i] = data.draw(st.integers(0, 255), label="byte")
        if data.draw(st.booleans(), label="truncate"):
            raw = raw[: data.draw(st.integers(0, len(raw)), label="cut")]
        text = bytes(raw)
    else:
        text = json.dumps(_mutate_manifest(data, manifest)).encode()
    (d / "manifest.json").write_bytes(text)
    COUNTS["manifest"] += 1
    _check(lambda: load_manifest(d, verify_hashes=True))


@FUZZ
@given(data=st.data())
def test_fuzz_film_reader_raises_only_bundle_errors(work, data):
    from oat_edge.runtime import _native
    from oat_edge.runtime.film import FilmBank

    d, original = work
    raw = bytearray(original["film.npz"])
    kind = data.draw(st.sampled_from(["flip", "truncate", "arrays"]), label="kind")
    if kind == "flip":
        for _ in range(data.draw(st.integers(1, 8), label="flips")):
            i = data.draw(st.integers(0, len(raw) - 1), label="at")
            raw[i] = data.draw(st.integers(0, 255), label="byte")
        (d / "film.npz").write_bytes(bytes(raw))
    elif kind == "truncate":
        (d / "film.npz").write_bytes(bytes(raw[: data.draw(st.integers(0, len(raw) - 1), label="cut")]))
    else:
        from oat_edge.bundle.film import write_npz

        (d / "film.npz").write_bytes(original["film.npz"])
        arrays = load_npz_plain(d / "film.npz")
        key = data.draw(st.sampled_from(sorted(arrays)), label="key")
        change = data.draw(st.sampled_from(["drop", "dtype", "shape", "nan", "scalar", "empty"]), label="change")
        if change == "drop":
            del arrays[key]
        elif change == "dtype":
            arrays[key] = arrays[key].astype(data.draw(st.sampled_from([np.float16, np.float64, np.int32, np.uint8])))
        elif change == "shape":
            arrays[key] = arrays[key].reshape(-1)[: max(0, arrays[key].size - 1)]
        elif change == "nan" and arrays[key].dtype.kind == "f" and arrays[key].size:
            arrays[key] = arrays[key].copy()
            arrays[key].reshape(-1)[0] = np.nan
        elif change == "scalar":
            arrays[key] = np.float64(3.0)
        else:
            arrays[key] = np.zeros((0,) + arrays[key].shape[1:], arrays[key].dtype)
        write_npz(d / "film.npz", arrays)
    COUNTS["film"] += 1
    manifest = json.loads(original["manifest.json"])
    sizes = {float(k): int(v) for k, v in manifest["film"]["sizes"].items()}
    impl = _native.load("python")
    _check(lambda: FilmBank(d / "film.npz", manifest["model"]["widths"], sizes,
                            manifest["film"]["negative_slope"], impl, 4))
    (d / "film.npz").write_bytes(original["film.npz"])


I64 = 2**63
SITE_VALUES = st.one_of(st.sampled_from([0, 1, -1, -16, 2**31, 2**32, 2**62, I64 - 16, I64 - 8, I64 - 1, -I64,
                                         -I64 + 1, -(2**62)]),
                        st.integers(-I64, I64 - 1))


def _film_bank_verdict(path, manifest, impl):
    """("ok", off-grid vectors of every width) or ("refused", message) for one FilmBank load."""
    from oat_edge.runtime.film import FilmBank

    sizes = {float(k): int(v) for k, v in manifest["film"]["sizes"].items()}
    try:
        bank = FilmBank(path, manifest["model"]["widths"], sizes, manifest["film"]["negative_slope"], impl, 4)
    except OatEdgeError as e:
        assert "\n" not in str(e)
        return "refused", str(e)
    return "ok", [bank.vector(0.33, wi) for wi in range(len(bank.widths))]


@FUZZ
@given(data=st.data())
def test_fuzz_film_site_offsets_and_sizes_both_twins_agree(work, data):
    """Offsets and channel counts of the FiLM sites (int64 edge values, pairs whose sum still
    matches the FiLM size) go through FilmBank with the C++ computer and the Python twin: both
    refuse, or both accept and compute the same vectors."""
    from oat_edge.bundle.film import write_npz
    from oat_edge.runtime import _native
    from oat_edge.runtime._native import ext_import_error

    d, original = work
    manifest = json.loads(original["manifest.json"])
    arrays = load_npz_plain_bytes(original["film.npz"])
    keys = sorted(k for k in arrays if k.startswith("sites_w"))
    key = data.draw(st.sampled_from(keys), label="width")
    sites = arrays[key].copy()
    k = data.draw(st.integers(0, sites.shape[0] - 1), label="site")
    change = data.draw(st.sampled_from(["offset", "channels", "shift", "wrap-pair"]), label="change")
    with np.errstate(over="ignore"):
        if change == "offset":
            sites[k, 0] = data.draw(SITE_VALUES, label="offset")
        elif change == "channels":
            sites[k, 1] = data.draw(SITE_VALUES, label="channels")
        elif change == "shift":  # channels moved between two sites: the FiLM size still adds up
            j = data.draw(st.integers(0, sites.shape[0] - 1), label="other")
            delta = data.draw(SITE_VALUES, label="delta")
            sites[k, 1] = np.int64(sites[k, 1]) + np.int64(delta)
            sites[j, 1] = np.int64(sites[j, 1]) - np.int64(delta)
        else:  # + 2**63 on two sites: their int64 sum wraps back to the original
            j = (k + 1) % sites.shape[0]
            sites[k, 1] = np.int64(sites[k, 1]) + np.int64(-I64)
            sites[j, 1] = np.int64(sites[j, 1]) + np.int64(-I64)
    arrays[key] = sites
    write_npz(d / "film.npz", arrays)
    COUNTS["sites"] += 1
    verdicts = {"python": _film_bank_verdict(d / "film.npz", manifest, _native.load("python"))}
    if ext_import_error() is None:
        verdicts["ext"] = _film_bank_verdict(d / "film.npz", manifest, _native.load("ext"))
        assert verdicts["ext"][0] == verdicts["python"][0], (sites.tolist(), verdicts["ext"][:1], verdicts["python"])
        if verdicts["ext"][0] == "ok":
            for a, b in zip(verdicts["ext"][1], verdicts["python"][1]):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    if verdicts["python"][0] == "refused":
        COUNTS["refused"] += 1
    (d / "film.npz").write_bytes(original["film.npz"])


def load_npz_plain_bytes(raw: bytes) -> dict:
    import io

    with np.load(io.BytesIO(raw), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@settings(max_examples=max(10, N // 35), deadline=None, database=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzz_whole_runtime_on_mutated_manifests(work, data):
    """A smaller number through the whole Runtime (sessions and all), unhashed mode."""
    from oat_edge.runtime import Runtime

    d, original = work
    manifest = json.loads(original["manifest.json"])
    (d / "manifest.json").write_bytes(json.dumps(_mutate_manifest(data, manifest)).encode())
    COUNTS["runtime"] += 1

    def load():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rt = Runtime(d, backend="onnxruntime", threads=1, verify=False)
        x = np.random.default_rng(0).random((2,) + rt.input_shape, dtype=np.float32)
        for mode in rt.modes[:3]:
            rt.set_mode(mode)
            rt.infer(x)
        rt.close()

    _check(load)
    (d / "manifest.json").write_bytes(original["manifest.json"])


def test_fuzz_counts(work):
    """Runs after the fuzz tests in this module (file order): they really ran."""
    if COUNTS["manifest"] == 0 and COUNTS["film"] == 0:
        pytest.skip("fuzz tests were deselected")
    assert COUNTS["manifest"] >= N and COUNTS["film"] >= N and COUNTS["sites"] >= N and COUNTS["runtime"] >= 10
    print(f"\nfuzz totals: {COUNTS}")
